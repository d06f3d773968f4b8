local recipe = require("capil.build.recipe")
local config = require("capil.build.config")
local capil = require("support.capil")

local V = "spec/fixtures/varfiles/"

local function cfg_of(opts)
  opts = opts or {}
  opts.backend = opts.backend or "qemu"
  return config.resolve(assert(recipe.load(opts.recipe or "spec/fixtures/recipes/custom-ubuntu.lua")), opts)
end

describe("config layering #unit", function()
  it("each layer wins over the layers below", function()
    -- default < shared < recipe < var-file < var, on one variable each
    local c = assert(cfg_of())
    assert.equal("default", c:explain("firmware").layer)                     -- schema default
    assert.equal("shared", c:explain("kubernetes_semver").layer)             -- kubernetes.json
    assert.equal("recipes/config/kubernetes.json", c:explain("kubernetes_semver").file)
    assert.equal("recipe", c:explain("cpus").layer)                          -- the recipe
    assert.equal(4, c:get("cpus"))
    c = assert(cfg_of({ var_files = { V .. "k8s-118.json" } }))
    assert.equal("v1.18.6", c:get("kubernetes_semver"))                      -- var file over shared
    assert.equal(2, c:get("cpus"))                                           -- var file over recipe
    assert.equal("var-file", c:explain("cpus").layer)
    c = assert(cfg_of({ var_files = { V .. "k8s-118.json" }, vars = { "cpus=8", "kubernetes_semver=v1.18.8",
      "kubernetes_deb_version=1.18.8-00" } }))
    assert.equal(8, c:get("cpus"))                                           -- --var over var file
    assert.equal("v1.18.8", c:get("kubernetes.semver"))
    assert.equal("--var", c:explain("cpus").file)
  end)

  it("downloads containerd 2.x from its release tarball unless containerd_url is set", function()
    local c = assert(cfg_of())
    assert.matches("cri%-containerd%-1%.3%.4", c:get("containerd_url"))     -- 1.x: the cri-containerd bundle
    c = assert(cfg_of({ vars = { "containerd_version=2.3.2" } }))
    assert.equal("https://github.com/containerd/containerd/releases/download/v2.3.2/containerd-2.3.2-linux-amd64.tar.gz",
      c:get("containerd_url"))
    assert.equal("derived", c:explain("containerd_url").layer)
    assert.matches("ships no cri%-containerd bundle", c:explain("containerd_url").note)
    c = assert(cfg_of({ vars = { "containerd_version=2.3.2", "containerd_url=https://mirror.example/c.tgz" } }))
    assert.equal("https://mirror.example/c.tgz", c:get("containerd_url"))  -- a set URL wins
  end)

  it("applies PACKER_VAR_FILES in order, last wins, before --var-file", function()
    local c = assert(cfg_of({ packer_var_files = V .. "k8s-118.json " .. V .. "k8s-119.json" }))
    assert.equal("v1.19.1", c:get("kubernetes_semver"))
    assert.equal(2, c:get("cpus"))   -- only in the first file
    assert.equal(30720, c:get("disk_size"))
    c = assert(cfg_of({ packer_var_files = V .. "k8s-119.json", var_files = { V .. "k8s-118.json" } }))
    assert.equal("v1.18.6", c:get("kubernetes_semver"))
  end)

  it("takes vsphere.json with cluster, or with host instead", function()
    local c = assert(cfg_of({ backend = "vsphere", var_files = { V .. "vsphere-cluster.json" } }))
    assert.equal("cluster1", c:get("vsphere.cluster"))
    assert.equal("", c:get("vsphere.host") or "")
    assert.is_false(c:get("insecure_connection"))
    c = assert(cfg_of({ backend = "vsphere", var_files = { V .. "vsphere-host.json" } }))
    assert.equal("esx1.example.com", c:get("vsphere.host"))
    assert.equal("", c:get("cluster"))                  -- vsphere.json's default
    assert.is_true(c:get("insecure_connection"))        -- the string "true"
  end)

  it("registers passwords as secrets and masks them in explanations", function()
    local c = assert(cfg_of({ backend = "vsphere", var_files = { V .. "vsphere-cluster.json" } }))
    assert.equal("****", c:explain("password").value)
    assert.equal("the pw is ****", require("capil.sys.log").redact("the pw is Vc-S3cret!pass"))
  end)

  it("reports bad var files naming the file and key", function()
    local c, errs = cfg_of({ var_files = { V .. "bad-type.json" } })
    assert.is_nil(c)
    assert.matches("bad-type.json: insecure_connection: expected a boolean", errs[1], 1, true)
    c, errs = cfg_of({ var_files = { V .. "malformed.json" } })
    assert.is_nil(c)
    assert.matches("malformed.json: line 1", errs[1], 1, true)
    c, errs = cfg_of({ var_files = { V .. "absent.json" } })
    assert.is_nil(c)
    assert.matches("absent.json", errs[1], 1, true)
    c, errs = cfg_of({ vars = { "novalue" } })
    assert.is_nil(c)
    assert.equal("--var: expected key=value, got 'novalue'", errs[1])
  end)

  it("coerces durations to seconds, keeping the text for roles and --explain", function()
    local c = assert(cfg_of({ vars = { "ssh_timeout=90m", "shutdown_timeout=300" } }))
    assert.equal(5400, c:get("ssh_timeout"))
    assert.equal(10, c:get("boot.wait"))
    assert.equal(0.1, c:get("boot_key_interval"))
    assert.equal(300, c:get("shutdown_timeout"))
    local vars = c:vars()
    assert.same({ "90m", "10s", "100ms", "300" }, { vars.ssh_timeout, vars.boot_wait, vars.boot_key_interval,
      vars.shutdown_timeout })
    assert.equal("90m", c:explain("ssh_timeout").value)
    local f = assert(config.from_vars({ backend = "qemu", vars = { "test_boot_timeout=2m" } }))
    assert.equal(120, f:get("test_boot_timeout"))
    assert.equal("2m", f:vars().test_boot_timeout)
    assert.equal("3h", f:text("node_conformance_timeout"))
    assert.equal(3 * 3600, f:get("node_conformance_timeout"))
  end)

  it("passes the roles' variables and the recipe's declared ones to roles", function()
    local c = assert(cfg_of({ vars = { "runc_version=1.4.3", "extra_debs=jq" } }))
    assert.equal("1.4.3", c:vars().runc_version)                            -- a shipped role's variable
    assert.equal("var", c:explain("runc_version").layer)
    local tmp = os.tmpname()
    assert(require("capil.sys.fs").write(tmp, 'return { extends = "ubuntu-2004", vars = { my_role_setting = "1" } }'))
    c = assert(cfg_of({ recipe = tmp, vars = { "my_role_setting=42" } }))
    os.remove(tmp)
    assert.equal("42", c:vars().my_role_setting)                            -- declared by the recipe
    assert.equal("var", c:explain("my_role_setting").layer)
    assert.equal("recipe", c:explain("my_role_setting").overrides[1].layer)
  end)

  it("inspect --explain prints the layer and file; the password never", function()
    local r = capil.run({ "inspect", "ubuntu-2004", "--backend", "vsphere", "--var-file", V .. "vsphere-cluster.json",
      "--explain", "cluster", "--explain", "password" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("vsphere.cluster = cluster1\n  from " .. V .. "vsphere-cluster.json (var-file)", r.stdout, 1, true)
    assert.matches("vsphere.password = ****", r.stdout, 1, true)
    r = capil.run({ "inspect", "ubuntu-2004", "--backend", "vsphere", "--var-file", V .. "vsphere-cluster.json" })
    assert.equal(0, r.code)
    assert.not_matches("Vc-S3cret", r.stdout, 1, true)
    assert.truthy(require("capil.sys.json").decode(r.stdout).steps)
    r = capil.run({ "inspect", "ubuntu-2004" }, { env_add = { PACKER_VAR_FILES = V .. "k8s-119.json" } })
    assert.matches('"build_version": "ubuntu-2004-kube-v1.19.1"', r.stdout, 1, true)
  end)
end)

describe("config errors and secrets #unit", function()
  it("never prints a secret value in a validation error", function()
    local r = capil.run({ "validate", "ubuntu-2004", "--var", "ssh_password=Hunter2 with space",
      "--var", "remote_password=Rem0te-Secret", "--var", "remote_password=Rem0te-Secret" })
    assert.equal(1, r.code)
    assert.matches("ssh_password: must not contain spaces", r.stderr, 1, true)
    assert.not_matches("Hunter2", r.stderr, 1, true)
  end)

  it("takes govc's environment below var files for the vSphere backends #unit", function()
    local env = { GOVC_URL = "https://user1:pw-from-url@vc.example.com/sdk", GOVC_INSECURE = "1",
      GOVC_DATACENTER = "DC9", GOVC_PASSWORD = "pw-from-env" }
    local g = config.govc_env(function(k) return env[k] end)
    assert.same({ "https://vc.example.com/sdk", "GOVC_URL" }, g.vcenter_server)
    assert.same({ "user1", "GOVC_URL" }, g.username)
    assert.same({ "pw-from-env", "GOVC_PASSWORD" }, g.password)
    assert.same({ "true", "GOVC_INSECURE" }, g.insecure_connection)
    assert.same({ "DC9", "GOVC_DATACENTER" }, g.datacenter)
    assert.same({}, config.govc_env(function() return nil end))
  end)

  it("reads GOVC_URL as govc does: userinfo to the last @, percent-decoded, https and /sdk by default", function()
    local cases = {
      { "vc.example.com", { server = "https://vc.example.com/sdk" } },
      { "http://vc:8989", { server = "http://vc:8989/sdk" } },
      { "https://vc/custom/path", { server = "https://vc/custom/path" } },
      { "admin@corp.local:P@ss:w0rd@vc.example.com",
        { server = "https://vc.example.com/sdk", username = "admin@corp.local", password = "P@ss:w0rd" } },
      { "https://administrator%40vsphere.local:p%40ss%25%3A@10.0.0.5/sdk",
        { server = "https://10.0.0.5/sdk", username = "administrator@vsphere.local", password = "p@ss%:" } },
      { "user@vc", { server = "https://vc/sdk", username = "user" } },
      { "https://u:pw@vc/sdk?x=a@b", { server = "https://vc/sdk?x=a@b", username = "u", password = "pw" } },
    }
    for _, c in ipairs(cases) do
      assert.same(c[2], assert(config.parse_govc_url(c[1])), c[1])
    end
    local _, err = config.parse_govc_url("u:bad%zzsecret@vc")
    assert.matches("GOVC_URL: the password in the URL has a bad %-escape", err, 1, true)
    assert.not_matches("bad%zzsecret", err, 1, true)
    assert.matches("no host", select(2, config.parse_govc_url("u:pw@")), 1, true)
  end)

  it("never prints GOVC_URL's password, even with an unescaped @ in the user name", function()
    local r = capil.run({ "inspect", "ubuntu-2004", "--backend", "vsphere", "--explain", "vcenter_server" },
      { env_add = { GOVC_URL = "https://admin@corp.local:Sup3r@Secret@127.0.0.1:1/sdk" } })
    local out = r.stdout .. r.stderr
    assert.equal(0, r.code, out)
    assert.matches("https://127.0.0.1:1/sdk", out, 1, true)
    assert.not_matches("Sup3r", out, 1, true)
    assert.not_matches("Secret", out, 1, true)
    local bad = capil.run({ "validate", "ubuntu-2004", "--backend", "vsphere" },
      { env_add = { GOVC_URL = "https://u:Sup3r%Secret@127.0.0.1/sdk" } })
    assert.equal(1, bad.code)
    assert.matches("GOVC_URL: the password in the URL has a bad %-escape", bad.stderr, 1, true)
    assert.not_matches("Sup3r", bad.stdout .. bad.stderr, 1, true)
  end)
end)
