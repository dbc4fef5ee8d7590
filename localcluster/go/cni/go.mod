// Wrapper module: builds the CNI reference plugins a node's bridge network needs.
module spotrun.dev/localcluster/cni

go 1.26.0

require github.com/containernetworking/plugins v1.9.1 // indirect
