// Wrapper module: builds crictl, the CRI command line that kind's node image carries.
module spotrun.dev/localcluster/crictl

go 1.26.6

require sigs.k8s.io/cri-tools v1.37.0 // indirect
