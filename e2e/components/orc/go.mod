// Pins the OpenStack Resource Controller (ORC), github.com/k-orc/openstack-resource-controller/v2,
// at the version CAPO v0.15.0-beta.0 requires (its go.mod). The benchmark harness installs ORC's
// CRDs from this module (CAPO's OpenStackServer controller watches ORC Images, so the Image CRD
// must exist); components/build.sh orc-dir prints the module's source directory.
module capow.dev/e2e/components/orc

go 1.26.0

require github.com/k-orc/openstack-resource-controller/v2 v2.6.0 // indirect
