--- capil test — boots a built image with the test cloud-init data and runs
--- the test suites over SSH (capil.test.imagetest).
local build_options = require("capil.build.loader")
local cli = require("capil.cli")
local imagetest = require("capil.test.imagetest")

local options = {
  { name = "backend", short = "b", arg = "NAME", help = build_options.backend_help() },
  { name = "suite", arg = "LIST", multi = true, help = "comma-separated suites: cni, node-conformance "
    .. "(default: the test_suites variable; none: boot and log in only)" },
  { name = "keep", help = "leave the VM running (and a deployed copy in place); reach it with 'capil ssh'" },
  { name = "cloudinit", arg = "DIR", help = "test cloud-init data (default cloudinit/)" },
  { name = "var-file", arg = "FILE", multi = true, help = "JSON variables (vsphere.json, test settings)" },
  { name = "var", arg = "KEY=VALUE", multi = true, help = "one variable; wins over var files" },
  { name = "output", arg = "DIR", help = "output root for a VM-name target (default: output)" },
  { name = "insecure", help = "vSphere/ESXi: do not verify the server's TLS certificate" },
}

return {
  summary = "boot a built image with the test cloud-init data and run test suites over SSH",
  usage = "test BUILD_DIR|OVA|VM|library:LIBRARY/ITEM [--backend qemu|vsphere|esx] [--suite cni,node-conformance] [--keep] "
    .. "[--var-file F] [--var K=V]",
  help = [[
QEMU: boots the build's VMDK under a copy-on-write overlay (the build output
is never modified) with a NoCloud seed ISO (label cidata) made from
cloudinit/user-data and meta-data. vSphere/ESXi: deploys the OVA as
<build>-test (or takes an existing VM by name; vSphere: a target
library:LIBRARY/ITEM deploys that content library ovf item as <item>-test,
results in output/<item>/test), reverts to snapshot 'new'
and removes the others (or creates 'new'), sets guestinfo.userdata,
guestinfo.metadata and their .encoding=base64, takes snapshot 'cloudinit',
powers on and waits for the guest IP (image-govc-cloudinit.sh).
Then logs in as capv with cloudinit/id_ed25519.capi, waits for cloud-init,
checks passwordless sudo, and runs the suites:
  cni               the seed document's bridge + loopback CNI (10.22.0.0/16,
                    cni0) with the plugins tarball (cni_plugins_url,
                    cni_plugins_checksum), then a real ADD/DEL in a netns
  node-conformance  kubernetes-test-linux-amd64.tar.gz for the guest's
                    /etc/kubernetes-version, ginkgo with the seed's focus,
                    skip and e2e_node flags; JUnit files come back
Results: <build>/test/report.json, test/junit.xml (capil's steps), the
suites' JUnit files in test/junit/, test/test.log; the build's report.json
gets a 'test' summary. Exit 1 if any step failed. The VM is powered off,
and a deployed copy destroyed, unless --keep.]],
  options = options,
  run = function(opts, args)
    if #args ~= 1 then cli.fail("test: name one build directory, OVA, VM or library:LIBRARY/ITEM", 2) end
    local backend = build_options.resolve_backend(opts.backend)
    local vars = build_options.vars(opts)
    if opts.cloudinit then vars[#vars + 1] = "cloudinit_dir=" .. opts.cloudinit end
    local cfg, err = require("capil.build.config").from_vars({ backend = backend, var_files = opts["var-file"],
      vars = vars })
    if not cfg then cli.fail("test: " .. err, 2) end
    local report, rerr, code = imagetest.run({
      target = args[1], backend = backend, cfg = cfg, suites = imagetest.suite_list(opts.suite), keep = opts.keep,
      cache_dir = build_options.cache_dir(), output_root = opts.output,
    })
    if not report then cli.fail(rerr, code == "EUSAGE" and 2 or 1) end
    return imagetest.summarise(report)
  end,
}

