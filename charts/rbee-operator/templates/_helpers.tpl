{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "rbee-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; the release name alone when it already contains the chart name. */}}
{{- define "rbee-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rbee-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "rbee-operator.labels" -}}
helm.sh/chart: {{ include "rbee-operator.chart" . }}
{{ include "rbee-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rbee
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "rbee-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rbee-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rbee-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rbee-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rbee-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "rbee-operator.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}

{{/* The namespace the operator watches: empty means all namespaces. */}}
{{- define "rbee-operator.watchNamespace" -}}
{{- if .Values.scope.namespaced }}
{{- default .Release.Namespace .Values.scope.watchNamespace }}
{{- end }}
{{- end }}

{{- define "rbee-operator.heartbeatURL" -}}
{{- printf "http://%s-heartbeat.%s.svc:%d/v1/heartbeat" (include "rbee-operator.fullname" .) .Release.Namespace (int .Values.service.heartbeatPort) }}
{{- end }}
