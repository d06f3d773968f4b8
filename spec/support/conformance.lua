-- spec/support/conformance.lua — a STAND-IN for Kubernetes'
-- kubernetes-test-linux-amd64.tar.gz (not reachable from CI): a tarball with
-- kubernetes/test/bin/ginkgo as a /bin/sh script that checks it received
-- exactly the words of the seed document's ginkgo command line and writes
-- JUnit reports as ginkgo would, plus a placeholder e2e_node.test.
local fs = require("capil.sys.fs")
local proc = require("capil.sys.proc")

local M = {}

-- The seed document's command line ("Run the e2e node conformance tests").
M.SEED_GINKGO = require("support.seed").GINKGO

M.SEED_ARGS = M.SEED_GINKGO:gsub("^sudo %./ginkgo ", "")

-- STAND-IN for ginkgo from kubernetes-test-linux-amd64.tar.gz: it checks that
-- it got exactly the words of the seed document's command line (the seed's
-- text, parsed by /bin/sh here, plus --report-dir=<unpack dir>/junit) and
-- runs as root, then writes two JUnit reports into the report dir (one with a
-- failure, and exit 1, when a FAIL file lies beside it), as ginkgo would.
local GINKGO = [[
#!/bin/sh
# STAND-IN for kubernetes-test-linux-amd64's ginkgo (capil spec/suites_spec.lua)
cd "$(dirname "$0")" || exit 5
report="$(cd ../../.. && pwd)/junit"
[ "$(id -u)" = 0 ] || { echo "ginkgo stand-in: not run as root" >&2; exit 4; }
[ -e ./e2e_node.test ] || { echo "ginkgo stand-in: no e2e_node.test" >&2; exit 5; }
actual=$(for w in "$@"; do printf '<%s>\n' "$w"; done)
expected=$(for w in @ARGS@ --report-dir="$report"; do printf '<%s>\n' "$w"; done)
if [ "$actual" != "$expected" ]; then
  echo "ginkgo stand-in: arguments differ from the seed's" >&2
  printf 'expected:\n%s\nactual:\n%s\n' "$expected" "$actual" >&2
  exit 3
fi
echo "Running Suite: E2eNode Suite (stand-in)"
mkdir -p "$report/nested"
cat > "$report/junit_01.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="E2eNode Suite" tests="3" failures="0" errors="0" time="1.5">
  <testcase name="[sig-node] a [Conformance]" classname="E2eNode Suite" time="1"></testcase>
  <testcase name="[sig-node] b [Conformance]" classname="E2eNode Suite" time="0.5"></testcase>
  <testcase name="[sig-network] c" classname="E2eNode Suite" time="0"><skipped></skipped></testcase>
</testsuite>
EOF
if [ -e ./FAIL ]; then
  cat > "$report/nested/junit_02.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="E2eNode Suite" tests="2" failures="1" errors="0" time="2">
  <testcase name="[sig-node] d [Conformance]" classname="E2eNode Suite" time="1"></testcase>
  <testcase name="[sig-node] e [Conformance]" classname="E2eNode Suite" time="1"><failure type="Failure">boom</failure></testcase>
</testsuite>
EOF
  echo "FAIL! -- 1 Failed"
  exit 1
fi
cat > "$report/nested/junit_02.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="E2eNode Suite" tests="2" failures="0" errors="0" time="2">
  <testcase name="[sig-node] d [Conformance]" classname="E2eNode Suite" time="1"></testcase>
  <testcase name="[sig-node] e [Conformance]" classname="E2eNode Suite" time="1"></testcase>
</testsuite>
EOF
echo "SUCCESS! -- 4 Passed"
]]

M.TARBALL = "kubernetes-test-linux-amd64.tar.gz"

--- Writes the stand-in tarball into `dir` (made if missing); with `fail`
--- its ginkgo reports one failed test and exits 1. Returns the path.
---@param dir string
---@param fail? boolean
function M.tarball(dir, fail)
  local work = assert(fs.tempdir({ prefix = "capil-spec-conformance" }))
  local bin = work .. "/kubernetes/test/bin"
  assert(fs.mkdir(bin))
  assert(fs.write(bin .. "/ginkgo", (GINKGO:gsub("@ARGS@", function() return M.SEED_ARGS end)), { mode = 493 }))
  assert(fs.write(bin .. "/e2e_node.test", "#!/bin/sh\n# STAND-IN placeholder for e2e_node.test\nexit 0\n",
    { mode = 493 }))
  if fail then assert(fs.write(bin .. "/FAIL", "")) end
  assert(fs.mkdir(dir))
  local r = assert(proc.run({ argv = { "tar", "-czf", dir .. "/" .. M.TARBALL, "-C", work, "kubernetes" } }))
  assert(r.code == 0, r.stderr)
  assert(fs.remove(work, { recursive = true }))
  return dir .. "/" .. M.TARBALL
end

return M
