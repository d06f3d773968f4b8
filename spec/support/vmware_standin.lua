-- spec/support/vmware_standin.lua — a RECORDING STAND-IN for VMware's
-- command-line tools `vmrun` and `vmware-vdiskmanager` (no VMware product
-- runs on the CI machine). It writes two /bin/sh scripts into a temp dir;
-- each appends its argv (one line, words separated by " | ") to calls.log
-- and emulates just enough of the real tool:
--   vmware-vdiskmanager -c -s <n>MB -a <adapter> -t <type> <file>: qemu-img create -f vmdk
--   vmware-vdiskmanager -r <src> -t 5 <dst>: qemu-img convert to streamOptimized
--   vmrun [-T ws|fusion] start|stop|list|getGuestIPAddress|snapshot|listSnapshots|deleteVM
-- with the running VMs and snapshots kept in files. getGuestIPAddress fails
-- with VMware's "Error: The VMware Tools are not running…" `ip_after` times,
-- then prints `ip`. Not a model of VMware beyond these lines.
local fs = require("capil.sys.fs")

local M = {}

local VMRUN = [[#!/bin/sh
S=%q
{ printf 'vmrun'; for a in "$@"; do printf ' | %%s' "$a"; done; printf '\n'; } >> "$S/calls.log"
if [ "$1" = "-T" ]; then shift 2; fi
cmd=$1; vmx=$2
case "$cmd" in
  start)
    [ -f "$vmx" ] || { echo "Error: Cannot open VM: $vmx, The virtual machine cannot be found"; exit 255; }
    grep -qxF "$vmx" "$S/running" 2>/dev/null || echo "$vmx" >> "$S/running"
    # with a "display": the RFB stand-in on the .vmx's VNC port, as the VM's console
    if [ -f "$S/rfb" ] && [ ! -f "$S/rfb.pid" ]; then
      port=$(sed -n 's/^RemoteDisplay\.vnc\.port *= *"\([0-9]*\)".*/\1/p' "$vmx")
      python3 "$(cat "$S/rfb")" "$port" 003.007 none "$S/keys.log" < /dev/null > /dev/null 2>&1 &
      echo $! > "$S/rfb.pid"
    fi ;;
  stop)
    grep -qxF "$vmx" "$S/running" 2>/dev/null || { echo "Error: The virtual machine is not powered on: $vmx"; exit 255; }
    [ -f "$S/rfb.pid" ] && { kill "$(cat "$S/rfb.pid")" 2>/dev/null; rm -f "$S/rfb.pid"; }
    grep -vxF "$vmx" "$S/running" > "$S/running.new"; mv "$S/running.new" "$S/running" ;;
  list)
    n=$(grep -c . "$S/running" 2>/dev/null); echo "Total running VMs: ${n:-0}"; cat "$S/running" 2>/dev/null ;;
  getGuestIPAddress)
    c=$(cat "$S/ip_calls" 2>/dev/null || echo 0); c=$((c + 1)); echo $c > "$S/ip_calls"
    if [ $c -le $(cat "$S/ip_after") ]; then
      echo "Error: The VMware Tools are not running in the virtual machine: $vmx"; exit 255
    fi
    cat "$S/ip" ;;
  snapshot)
    echo "$3" >> "$S/snapshots" ;;
  listSnapshots)
    n=$(grep -c . "$S/snapshots" 2>/dev/null); echo "Total snapshots: ${n:-0}"; cat "$S/snapshots" 2>/dev/null ;;
  deleteVM)
    rm -rf "$(dirname "$vmx")" ;;
  *) echo "Error: Unrecognized command: $cmd"; exit 255 ;;
esac
exit 0
]]

local VDISK = [[#!/bin/sh
S=%q
{ printf 'vmware-vdiskmanager'; for a in "$@"; do printf ' | %%s' "$a"; done; printf '\n'; } >> "$S/calls.log"
case "$1" in
  -c) size=$(echo "$3" | sed 's/MB$/M/'); exec qemu-img create -q -f vmdk "$8" "$size" ;;
  -r) [ -e "$5" ] && { echo "Failed to convert disk: The file already exists"; exit 1; }
      exec qemu-img convert -O vmdk -o subformat=streamOptimized "$2" "$5" ;;
  *) echo "VMware Virtual Disk Manager stand-in: unsupported $1"; exit 1 ;;
esac
]]

local function write_exec(path, text)
  assert(fs.write(path, text))
  assert(require("capil.sys.proc").run({ argv = { "chmod", "755", path } }).code == 0)
end

--- Creates the stand-in. opts: ip_after (failures before the IP, default
--- 2), ip (default 192.168.122.50), vdiskmanager (default true: false
--- leaves it out), display (true: `vmrun start` runs spec/support/rfb_server.py
--- on the .vmx's VNC port, security None, and `stop` ends it; s.keys() reads
--- the KeyEvents it got). Returns {dir, bin, vmrun, vdiskmanager?, env(name),
--- calls(), running(), snapshots()}; the dir goes at cleanup.
function M.new(opts)
  opts = opts or {}
  local dir = assert(fs.tempdir({ prefix = "capil-spec-vmware" }))
  local bin = dir .. "/bin"
  assert(fs.mkdir(bin))
  assert(fs.write(dir .. "/ip_after", tostring(opts.ip_after or 2)))
  assert(fs.write(dir .. "/ip", (opts.ip or "192.168.122.50") .. "\n"))
  local s = { dir = dir, bin = bin, vmrun = bin .. "/vmrun" }
  write_exec(s.vmrun, VMRUN:format(dir))
  if opts.display then assert(fs.write(dir .. "/rfb", assert(fs.realpath("spec/support/rfb_server.py")))) end
  if opts.vdiskmanager ~= false then
    s.vdiskmanager = bin .. "/vmware-vdiskmanager"
    write_exec(s.vdiskmanager, VDISK:format(dir))
  end
  --- An env lookup for find_tools: PATH is the stand-in's bin only.
  function s.env(name)
    if name == "PATH" then return bin end
  end
  local function lines(file)
    local t = {}
    for l in (fs.read(dir .. "/" .. file) or ""):gmatch("[^\n]+") do t[#t + 1] = l end
    return t
  end
  --- Recorded command lines, "tool | arg | arg…", in order.
  function s.calls() return lines("calls.log") end
  function s.running() return lines("running") end
  function s.snapshots() return lines("snapshots") end
  function s.reset_calls() fs.remove(dir .. "/calls.log") end
  function s.keys() return lines("keys.log") end
  --- Stops a display left running (a test that failed half-way).
  function s.stop_display()
    local pid = tonumber(fs.read(dir .. "/rfb.pid") or "")
    if pid and require("capil.sys.proc").alive(pid) then require("capil.sys.proc").kill(pid) end
  end
  return s
end

return M
