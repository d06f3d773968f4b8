-- spec/support/seed.lua — texts copied verbatim from the seed document
-- (../shared/mission/building-images-for-vsphere.md, "Testing Images"): the
-- independent oracle the suites are checked against.
local M = {}

-- "Initialize a CNI": the heredocs.
M.CNI_MYNET = [[
{
    "cniVersion": "0.2.0",
    "name": "mynet",
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": true,
    "ipam": {
        "type": "host-local",
        "subnet": "10.22.0.0/16",
        "routes": [
            { "dst": "0.0.0.0/0" }
        ]
    }
}
]]
M.CNI_LOOPBACK = [[
{
    "cniVersion": "0.2.0",
    "name": "lo",
    "type": "loopback"
}
]]

-- "Run the e2e node conformance tests": the ginkgo command line.
M.GINKGO = [[sudo ./ginkgo --nodes=8 --flakeAttempts=2 --focus="\[Conformance\]" --skip="\[Flaky\]|\[Serial\]|\[sig-network\]|Container Lifecycle Hook" ./e2e_node.test -- --k8s-bin-dir=/usr/bin --container-runtime=remote --container-runtime-endpoint unix:///var/run/containerd/containerd.sock --container-runtime-process-name /usr/local/bin/containerd --container-runtime-pid-file= --kubelet-flags="--cgroups-per-qos=true --cgroup-root=/ --runtime-cgroups=/system.slice/containerd.service" --extra-log="{\"name\": \"containerd.log\", \"journalctl\": [\"-u\", \"containerd\"]}"]] -- luacheck: no max line length

return M
