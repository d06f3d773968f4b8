// Guest IP reporting for the shim (-guest-ip): vcsim never sets a guest IP.
// Here, a while after a VM powers on, "VMware Tools" report the address:
// guest.ipAddress and summary.guest.ipAddress hold it, and the first NIC's
// guest.net[0].ipAddress lists an IPv6 link-local and an APIPA address
// before it (as real guests often do), so a client has to filter. The change
// goes through Map.Update, so WaitForUpdatesEx sees it. Power-off clears it.
// VMs already running at start keep vcsim's state (no IP).
package main

import (
	"net"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	linkLocalIPv6 = "fe80::250:56ff:fe00:1"
	apipaIPv4     = "169.254.7.7"
)

func validIPv4(s string) bool {
	ip := net.ParseIP(s)
	return ip != nil && ip.To4() != nil
}

// guestReporter watches power states; its maps are guarded by mu, which is
// never held while taking a simulator lock.
type guestReporter struct {
	ip    string
	delay time.Duration

	mu       sync.Mutex
	seen     map[string]types.VirtualMachinePowerState
	gen      map[string]int // bumped on each power transition: stale timers do nothing
	reported map[string]bool
}

func newGuestReporter(ip string, delay time.Duration) *guestReporter {
	g := &guestReporter{
		ip: ip, delay: delay,
		seen:     map[string]types.VirtualMachinePowerState{},
		gen:      map[string]int{},
		reported: map[string]bool{},
	}
	for ref, st := range powerStates() {
		g.seen[ref] = st.state
	}
	return g
}

type vmState struct {
	vm    *simulator.VirtualMachine
	state types.VirtualMachinePowerState
}

func powerStates() map[string]vmState {
	out := map[string]vmState{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			out[vm.Self.Value] = vmState{vm, powerState(vm)}
		}
	}
	return out
}

// reconcile looks for power transitions since the last look (called after
// each SOAP call): a power-on schedules the report, a power-off clears it.
func (g *guestReporter) reconcile() {
	states := powerStates()
	type job struct {
		vm  *simulator.VirtualMachine
		gen int
		on  bool
	}
	var jobs []job
	g.mu.Lock()
	for ref, st := range states {
		prev, known := g.seen[ref]
		g.seen[ref] = st.state
		on := st.state == types.VirtualMachinePowerStatePoweredOn
		wasOn := known && prev == types.VirtualMachinePowerStatePoweredOn
		switch {
		case on && !wasOn:
			g.gen[ref]++
			jobs = append(jobs, job{st.vm, g.gen[ref], true})
		case !on && wasOn:
			g.gen[ref]++
			if g.reported[ref] {
				delete(g.reported, ref)
				jobs = append(jobs, job{st.vm, g.gen[ref], false})
			}
		}
	}
	for ref := range g.seen {
		if _, ok := states[ref]; !ok {
			delete(g.seen, ref)
			delete(g.gen, ref)
			delete(g.reported, ref)
		}
	}
	g.mu.Unlock()
	for _, j := range jobs {
		j := j
		if j.on {
			time.AfterFunc(g.delay, func() { g.report(j.vm, j.gen) })
		} else {
			g.clear(j.vm)
		}
	}
}

func (g *guestReporter) current(ref string, gen int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.gen[ref] == gen
}

// report sets the guest IP, unless the VM went away or changed power since.
func (g *guestReporter) report(vm *simulator.VirtualMachine, gen int) {
	ref := vm.Self.Value
	simulator.Map.WithLock(vm, func() {
		if simulator.Map.Get(vm.Self) == nil || vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
			return
		}
		if !g.current(ref, gen) {
			return
		}
		changes := []types.PropertyChange{
			{Name: "guest.ipAddress", Val: g.ip},
			{Name: "summary.guest.ipAddress", Val: g.ip},
			{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)},
			{Name: "summary.guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)},
			{Name: "guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsOk},
			{Name: "summary.guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsOk},
			{Name: "guest.guestState", Val: "running"},
		}
		if vm.Guest != nil && len(vm.Guest.Net) > 0 {
			nics := append([]types.GuestNicInfo(nil), vm.Guest.Net...)
			nics[0].IpAddress = []string{linkLocalIPv6, apipaIPv4, g.ip}
			nics[0].IpConfig = &types.NetIpConfigInfo{IpAddress: []types.NetIpConfigInfoIpAddress{
				{IpAddress: linkLocalIPv6, PrefixLength: 64, State: "preferred"},
				{IpAddress: apipaIPv4, PrefixLength: 16, State: "preferred"},
				{IpAddress: g.ip, PrefixLength: 24, State: "preferred"},
			}}
			changes = append(changes, types.PropertyChange{Name: "guest.net", Val: nics})
		}
		simulator.Map.Update(vm, changes)
		g.mu.Lock()
		g.reported[ref] = true
		g.mu.Unlock()
	})
}

// clear removes what report set, as a guest that stopped would.
func (g *guestReporter) clear(vm *simulator.VirtualMachine) {
	simulator.Map.WithLock(vm, func() {
		if simulator.Map.Get(vm.Self) == nil {
			return
		}
		changes := []types.PropertyChange{
			{Name: "guest.ipAddress", Val: nil},
			{Name: "summary.guest.ipAddress", Val: nil},
			{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)},
			{Name: "summary.guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)},
			{Name: "guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsNotRunning},
			{Name: "summary.guest.toolsStatus", Val: types.VirtualMachineToolsStatusToolsNotRunning},
			{Name: "guest.guestState", Val: "notRunning"},
		}
		if vm.Guest != nil && len(vm.Guest.Net) > 0 {
			nics := append([]types.GuestNicInfo(nil), vm.Guest.Net...)
			nics[0].IpAddress = nil
			nics[0].IpConfig = nil
			changes = append(changes, types.PropertyChange{Name: "guest.net", Val: nics})
		}
		simulator.Map.Update(vm, changes)
	})
}
