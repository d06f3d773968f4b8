// ExportVm for the shim: vcsim 0.24.2 has no export at all. As vCenter does,
// ExportVm on a powered-off VM returns an HttpNfcLease that starts
// "initializing" and turns "ready" (300 ms later) with one deviceUrl per
// disk; GET on /nfc/export-N/disk-K.vmdk then streams the disk. The lease
// lives in simulator.Map, so RetrievePropertiesEx, CreateFilter,
// WaitForUpdatesEx and HttpNfcLeaseProgress/Complete/Abort go through the
// stock dispatcher.
//
// The bytes served are the disk's file in the datastore directory: the
// backing's "<vm>.vmdk" (what a PUT to /folder/<vm>/<vm>.vmdk replaces), or
// its "-flat.vmdk" extent when that one has data; vcsim creates both empty,
// and an empty disk is served as the -export-disk file when one is given
// (real vCenter always streams a streamOptimized VMDK, which vcsim's empty
// placeholders are not), else as 1 MiB of a fixed pattern (byte i = i % 251).
//
// A lease of an ExportVm injected "slow" pauses after every 64 KiB it serves
// (slowWriter), so a test can watch the client's progress reports or
// interrupt the transfer.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

const (
	leaseReadyAfter = 300 * time.Millisecond
	patternSize     = 1 << 20
	slowChunk       = 64 << 10
)

// exportDisk is one file a lease serves.
type exportDisk struct {
	key      string // "/vm-57/ParaVirtualSCSIController0:0"
	target   string // "disk-0.vmdk"
	path     string // local file; "" serves the pattern
	capacity int64  // KB
}

// exportLease is an HttpNfcLease of an export; its fields besides the
// embedded mo type are guarded by the simulator's lock on the lease.
type exportLease struct {
	mo.HttpNfcLease
	exp    *exporter
	disks  []exportDisk
	closed bool
	slow   time.Duration // pause after every slowChunk served (0: full speed)
}

type exporter struct {
	mu     sync.Mutex
	next   int
	leases map[string]*exportLease // by moref value "export-N"
	empty  string                  // served for a disk without data ("" = the pattern)
}

func newExporter(empty string) *exporter {
	return &exporter{leases: map[string]*exportLease{}, empty: empty}
}

// exportVm starts an export of a powered-off VM.
func (x *exporter) exportVm(w http.ResponseWriter, body []byte, slow time.Duration) {
	req, ok := decode(w, body).(*types.ExportVm)
	if !ok {
		return
	}
	vm := lookupVM(w, req.This)
	if vm == nil {
		return
	}
	var (
		state types.VirtualMachinePowerState
		disks []exportDisk
	)
	simulator.Map.WithLock(vm, func() {
		state = vm.Runtime.PowerState
		if state == types.VirtualMachinePowerStatePoweredOff {
			disks = withDefault(vmDisks(vm), x.empty)
		}
	})
	if state != types.VirtualMachinePowerStatePoweredOff {
		invalidPowerState(w, types.VirtualMachinePowerStatePoweredOff, state)
		return
	}

	x.mu.Lock()
	x.next++
	ref := types.ManagedObjectReference{Type: "HttpNfcLease", Value: fmt.Sprintf("export-%d", x.next)}
	lease := &exportLease{exp: x, disks: disks, slow: slow}
	lease.Self = ref
	lease.State = types.HttpNfcLeaseStateInitializing
	lease.Mode = "pushOrGet"
	x.leases[ref.Value] = lease
	x.mu.Unlock()
	simulator.Map.Put(lease)

	info := &types.HttpNfcLeaseInfo{Lease: ref, Entity: vm.Self, LeaseTimeout: 300}
	for _, d := range disks {
		info.DeviceUrl = append(info.DeviceUrl, types.HttpNfcLeaseDeviceUrl{
			Key:      d.key,
			Url:      fmt.Sprintf("https://*/nfc/%s/%s", ref.Value, d.target),
			Disk:     types.NewBool(true),
			TargetId: d.target,
			FileSize: d.size(),
		})
		info.TotalDiskCapacityInKB += d.capacity
	}
	time.AfterFunc(leaseReadyAfter, func() {
		simulator.Map.WithLock(lease, func() {
			if lease.closed {
				return
			}
			simulator.Map.Update(lease, []types.PropertyChange{
				{Name: "info", Val: info},
				{Name: "initializeProgress", Val: int32(100)},
				{Name: "state", Val: types.HttpNfcLeaseStateReady},
			})
		})
	})

	writeResult(w, &struct {
		XMLName   xml.Name                     `xml:"urn:vim25 ExportVmResponse"`
		Returnval types.ManagedObjectReference `xml:"returnval"`
	}{Returnval: ref})
}

// vmDisks lists the disks of a VM (called with the VM locked).
func vmDisks(vm *simulator.VirtualMachine) []exportDisk {
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	var out []exportDisk
	for _, dev := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := dev.(*types.VirtualDisk)
		d := exportDisk{
			target:   fmt.Sprintf("disk-%d.vmdk", len(out)),
			capacity: disk.CapacityInKB,
			key:      fmt.Sprintf("/%s/%s", vm.Self.Value, diskSlot(devices, disk)),
		}
		if b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
			d.path = pickDiskFile(vm, b.GetVirtualDeviceFileBackingInfo().FileName)
		}

		out = append(out, d)
	}
	return out
}

// diskSlot names a disk by its controller, as vCenter's device keys do:
// "ParaVirtualSCSIController0:0".
func diskSlot(devices object.VirtualDeviceList, disk *types.VirtualDisk) string {
	unit := int32(0)
	if disk.UnitNumber != nil {
		unit = *disk.UnitNumber
	}
	ctl := devices.FindByKey(disk.ControllerKey)
	if ctl == nil {
		return fmt.Sprintf("disk%d:%d", disk.Key, unit)
	}
	bus := int32(0)
	if c, ok := ctl.(types.BaseVirtualController); ok {
		bus = c.GetVirtualController().BusNumber
	}
	name := reflect.TypeOf(ctl).Elem().Name()
	name = strings.TrimPrefix(name, "Virtual")
	return fmt.Sprintf("%s%d:%d", name, bus, unit)
}

// pickDiskFile maps "[LocalDS_0] vm/vm.vmdk" to the local file holding the
// disk's bytes: the descriptor path, or its -flat extent if only that one
// has data. "" when neither has any (the pattern is served).
func pickDiskFile(vm *simulator.VirtualMachine, name string) string {
	var p object.DatastorePath
	if !p.FromString(name) {
		return ""
	}
	ds, ok := simulator.Map.FindByName(p.Datastore, vm.Datastore).(*simulator.Datastore)
	if !ok {
		return ""
	}
	local := filepath.Join(ds.Info.GetDatastoreInfo().Url, p.Path)
	for _, f := range []string{local, strings.TrimSuffix(local, ".vmdk") + "-flat.vmdk"} {
		if st, err := os.Stat(f); err == nil && st.Mode().IsRegular() && st.Size() > 0 {
			return f
		}
	}
	return ""
}

// withDefault serves file for every disk that has no data of its own.
func withDefault(disks []exportDisk, file string) []exportDisk {
	for i := range disks {
		if disks[i].path == "" {
			disks[i].path = file
		}
	}
	return disks
}

func (d exportDisk) size() int64 {
	if d.path != "" {
		if st, err := os.Stat(d.path); err == nil {
			return st.Size()
		}
	}
	return patternSize
}

func pattern() []byte {
	b := make([]byte, patternSize)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// serveNFC answers GET/HEAD /nfc/export-N/disk-K.vmdk: 404 for an unknown,
// completed or aborted lease, 503 while it initializes.
func (x *exporter) serveNFC(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/nfc/"), "/")
	if len(parts) != 2 {
		http.NotFound(w, r)
		return
	}
	x.mu.Lock()
	lease := x.leases[parts[0]]
	x.mu.Unlock()
	if lease == nil {
		http.NotFound(w, r)
		return
	}
	var (
		ready bool
		disk  *exportDisk
		slow  time.Duration
	)
	simulator.Map.WithLock(lease, func() {
		ready = !lease.closed && lease.State == types.HttpNfcLeaseStateReady
		slow = lease.slow
		for i := range lease.disks {
			if lease.disks[i].target == parts[1] {
				d := lease.disks[i]
				disk = &d
			}
		}
	})
	if disk == nil {
		http.NotFound(w, r)
		return
	}
	if !ready {
		http.Error(w, "lease not ready", http.StatusServiceUnavailable)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	var content io.ReadSeeker
	modtime := time.Time{}
	if disk.path != "" {
		f, err := os.Open(disk.path)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil {
			modtime = st.ModTime()
		}
		content = f
	} else {
		content = bytes.NewReader(pattern())
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if slow > 0 {
		w = &slowWriter{ResponseWriter: w, pause: slow}
	}
	http.ServeContent(w, r, parts[1], modtime, content)
}

// slowWriter sends what it is given, pausing after every slowChunk bytes.
type slowWriter struct {
	http.ResponseWriter
	pause time.Duration
	since int // bytes since the last pause
}

func (s *slowWriter) Write(p []byte) (int, error) {
	done := 0
	for len(p) > 0 {
		n := slowChunk - s.since
		if n > len(p) {
			n = len(p)
		}
		m, err := s.ResponseWriter.Write(p[:n])
		done += m
		if err != nil {
			return done, err
		}
		p = p[n:]
		if s.since += n; s.since == slowChunk {
			s.since = 0
			if f, ok := s.ResponseWriter.(http.Flusher); ok {
				f.Flush()
			}
			time.Sleep(s.pause)
		}
	}
	return done, nil
}

// close ends the lease (called by the dispatcher with the lease locked).
func (l *exportLease) close(ctx *simulator.Context) {
	l.closed = true
	l.exp.mu.Lock()
	delete(l.exp.leases, l.Self.Value)
	l.exp.mu.Unlock()
	ctx.Map.Remove(l.Self)
}

func leaseNotReady(state types.HttpNfcLeaseState) *soap.Fault {
	return simulator.Fault(fmt.Sprintf("The operation is not allowed in the current state (%s).", state),
		new(types.InvalidState))
}

// HttpNfcLeaseProgress records the client's progress (the lease must be ready).
func (l *exportLease) HttpNfcLeaseProgress(ctx *simulator.Context, req *types.HttpNfcLeaseProgress) soap.HasFault {
	body := new(methods.HttpNfcLeaseProgressBody)
	if l.State != types.HttpNfcLeaseStateReady {
		body.Fault_ = leaseNotReady(l.State)
		return body
	}
	simulator.Map.Update(l, []types.PropertyChange{{Name: "transferProgress", Val: req.Percent}})
	body.Res = new(types.HttpNfcLeaseProgressResponse)
	return body
}

// HttpNfcLeaseComplete ends a ready lease; its URLs then answer 404.
func (l *exportLease) HttpNfcLeaseComplete(ctx *simulator.Context, req *types.HttpNfcLeaseComplete) soap.HasFault {
	body := new(methods.HttpNfcLeaseCompleteBody)
	if l.State != types.HttpNfcLeaseStateReady {
		body.Fault_ = leaseNotReady(l.State)
		return body
	}
	simulator.Map.Update(l, []types.PropertyChange{{Name: "state", Val: types.HttpNfcLeaseStateDone}})
	l.close(ctx)
	body.Res = new(types.HttpNfcLeaseCompleteResponse)
	return body
}

// HttpNfcLeaseAbort ends the lease in any state.
func (l *exportLease) HttpNfcLeaseAbort(ctx *simulator.Context, req *types.HttpNfcLeaseAbort) soap.HasFault {
	simulator.Map.Update(l, []types.PropertyChange{{Name: "state", Val: types.HttpNfcLeaseStateError}})
	l.close(ctx)
	return &methods.HttpNfcLeaseAbortBody{Res: new(types.HttpNfcLeaseAbortResponse)}
}
