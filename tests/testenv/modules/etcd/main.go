// Command etcd is the upstream etcd server, built from go.etcd.io/etcd/server/v3 for
// tests/testenv. The server module's go.mod uses relative replaces, so `go install
// go.etcd.io/etcd/server/v3@version` fails; requiring it from this module works.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
