{{/* Rules on namespaced objects: cluster-wide, or in the watched namespace only. */}}
{{- define "rbee-operator.workerRules" }}
  # Watch RbeeWorkers into the cache that reconciles and heartbeat lookups read.
  - apiGroups: ["rbee.dev"]
    resources: ["rbeeworkers"]
    verbs: ["list", "watch"]
  # Write status by server-side apply on the status subresource.
  - apiGroups: ["rbee.dev"]
    resources: ["rbeeworkers/status"]
    verbs: ["patch"]
  # Worker pods: watch them, apply them (an apply that creates is authorised as create), delete them to restart a worker.
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["list", "watch", "create", "patch", "delete"]
  # The rbee.dev/heartbeat readiness gate: a pod condition the operator sets from heartbeats.
  - apiGroups: [""]
    resources: ["pods/status"]
    verbs: ["patch"]
  # One headless Service per worker (its stable status.endpoint), applied like the pod.
  - apiGroups: [""]
    resources: ["services"]
    verbs: ["list", "watch", "create", "patch"]
  # Draining waits until no EndpointSlice of the worker's Service lists the pod as ready.
  - apiGroups: ["discovery.k8s.io"]
    resources: ["endpointslices"]
    verbs: ["list", "watch"]
  # Events on RbeeWorkers for phase transitions and restarts.
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}
{{/* Rules on cluster-scoped objects: a ClusterRole is the only way to grant them. */}}
{{- define "rbee-operator.clusterRules" }}
  # Validate the service-account token a worker sends with each heartbeat.
  - apiGroups: ["authentication.k8s.io"]
    resources: ["tokenreviews"]
    verbs: ["create"]
  # Startup check that the RbeeWorker CRD is installed (and a clear error when it is not).
  - apiGroups: ["apiextensions.k8s.io"]
    resources: ["customresourcedefinitions"]
    resourceNames: ["rbeeworkers.rbee.dev"]
    verbs: ["get"]
{{- end }}
