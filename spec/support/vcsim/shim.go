// The shim: an HTTP wrapper around vcsim's own handler. It counts SOAP
// calls, plays injected faults and connection resets, answers the methods
// vcsim 0.24.2 lacks (PutUsbScanCodes, ExportVm; see export.go), refuses
// write methods under -restricted, reports guest IPs (guest.go), records
// the last request of each SOAP method and what datastore uploads carried,
// hands /rest and /api to rest.go, and serves the test endpoints under /shim/. Everything else reaches vcsim
// unchanged.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

type shimOptions struct {
	restricted   bool
	guestIP      string
	guestIPDelay time.Duration
	exportDisk   string
	username     string // the only REST login accepted (rest.go), with password
	password     string
	api          bool // serve /api/session (vSphere 7.0 U2+)
}

// injection is a scripted misbehaviour for the next `count` calls of a method.
type injection struct {
	Method  string `json:"method"`
	Action  string `json:"action"`   // "fault", "reset", "lost", "status", "delay" or "slow"
	Fault   string `json:"fault"`    // vim25 fault type, for "fault"
	Message string `json:"message"`  // faultstring (default: what vSphere says)
	Status  int    `json:"status"`   // HTTP status with an empty body, for "status"
	DelayMS int    `json:"delay_ms"` // "delay": wait, then answer; "slow" (ExportVm): pause per 64 KiB served
	Count   *int   `json:"count"`    // default 1; 0 removes the injection
}

type modifiers struct {
	LeftControl  bool `json:"leftControl"`
	LeftShift    bool `json:"leftShift"`
	LeftAlt      bool `json:"leftAlt"`
	LeftGui      bool `json:"leftGui"`
	RightControl bool `json:"rightControl"`
	RightShift   bool `json:"rightShift"`
	RightAlt     bool `json:"rightAlt"`
	RightGui     bool `json:"rightGui"`
}

type keyEvent struct {
	UsbHidCode int32     `json:"usbHidCode"`
	Modifiers  modifiers `json:"modifiers"`
}

type shim struct {
	inner  http.Handler
	svc    *simulator.Service
	opts   shimOptions
	export *exporter
	guest  *guestReporter

	mu      sync.Mutex
	calls   map[string]int
	injects map[string]*injection
	keys    map[string][]keyEvent // by VM moref value
	reqs    map[string][]byte     // the last request body, by SOAP method
	uploads []upload              // datastore PUTs, in order
	rest    []restCall            // REST requests, in order (rest.go)

	clientOnce sync.Once
	client     *vim25.Client // in-process, for the test endpoints
	clientErr  error
}

// restrictedMethods are the write methods an ESXi host on the free licence
// refuses (reads, Login and datastore HTTP transfers still work).
var restrictedMethods = map[string]bool{}

func init() {
	for _, m := range strings.Fields(`
		CreateVM_Task ReconfigVM_Task PowerOnVM_Task PowerOffVM_Task ResetVM_Task SuspendVM_Task
		ShutdownGuest RebootGuest StandbyGuest Destroy_Task UnregisterVM RegisterVM_Task Rename_Task
		CloneVM_Task RelocateVM_Task CustomizeVM_Task UpgradeVM_Task MarkAsTemplate MarkAsVirtualMachine
		CreateSnapshot_Task RemoveSnapshot_Task RemoveAllSnapshots_Task RevertToSnapshot_Task
		RevertToCurrentSnapshot_Task ImportVApp PutUsbScanCodes ExportVm MakeDirectory
		DeleteDatastoreFile_Task MoveDatastoreFile_Task CopyDatastoreFile_Task CreateFolder
		CreateVirtualDisk_Task DeleteVirtualDisk_Task CopyVirtualDisk_Task MoveVirtualDisk_Task
		ExtendVirtualDisk_Task SetCustomValue AnswerVM`) {
		restrictedMethods[m] = true
	}
}

func newShim(svc *simulator.Service, inner http.Handler, opts shimOptions) *shim {
	s := &shim{
		inner:   inner,
		svc:     svc,
		opts:    opts,
		calls:   map[string]int{},
		injects: map[string]*injection{},
		keys:    map[string][]keyEvent{},
		reqs:    map[string][]byte{},
		export:  newExporter(opts.exportDisk),
	}
	if opts.guestIP != "" {
		s.guest = newGuestReporter(opts.guestIP, opts.guestIPDelay)
	}
	return s
}

func (s *shim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case strings.HasPrefix(p, "/shim/"):
		s.serveTest(w, r)
	case strings.HasPrefix(p, "/nfc/export-"):
		s.export.serveNFC(w, r)
	case strings.HasPrefix(p, "/rest/") || strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, apiUploadPath):
		s.serveREST(w, r)
	case r.Method == http.MethodPut && strings.HasPrefix(p, "/folder/"):
		s.recordUpload(w, r)
	case r.Method == http.MethodPost && (p == "/sdk" || p == "/sdk/vimService"):
		s.serveSOAP(w, r)
	default:
		s.inner.ServeHTTP(w, r)
	}
}

// ======================================================================
// SOAP
// ======================================================================

func (s *shim) serveSOAP(w http.ResponseWriter, r *http.Request) {
	body, err := ioutil.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.Body = ioutil.NopCloser(bytes.NewReader(body))
	method, this := soapCall(body)
	var slow time.Duration // an ExportVm whose lease serves slowly

	if method != "" {
		s.mu.Lock()
		s.calls[method]++
		s.reqs[method] = body
		inj := s.injects[method]
		var act injection
		if inj != nil {
			act = *inj
			if *inj.Count--; *inj.Count <= 0 {
				delete(s.injects, method)
			}
		}
		s.mu.Unlock()
		if inj != nil && act.Action == "lost" {
			// the call is carried out, then its reply is lost: the
			// connection resets as a dropped link or a proxy's timeout does
			s.inner.ServeHTTP(httptest.NewRecorder(), r)
			if s.guest != nil {
				s.guest.reconcile()
			}
			act.Action = "reset"
		}
		if inj != nil && act.Action == "delay" {
			time.Sleep(time.Duration(act.DelayMS) * time.Millisecond)
			inj = nil
		}
		if inj != nil && act.Action == "slow" {
			slow = time.Duration(act.DelayMS) * time.Millisecond
			inj = nil
		}
		if inj != nil {
			s.misbehave(w, &act, this)
			return
		}
	}

	own := method == "PutUsbScanCodes" || method == "ExportVm"
	refused := s.opts.restricted && restrictedMethods[method]
	if (own || refused) && s.authenticated(r) {
		switch {
		case refused:
			writeFault(w, restrictedMessage, new(types.RestrictedVersion))
		case method == "PutUsbScanCodes":
			s.putUsbScanCodes(w, body)
		default:
			s.export.exportVm(w, body, slow)
		}
		return
	}
	// unauthenticated calls of our own methods also go to vcsim, which
	// answers NotAuthenticated before looking the method up
	s.inner.ServeHTTP(w, r)
	if s.guest != nil {
		s.guest.reconcile()
	}
}

// misbehave plays an injection instead of answering the call.
func (s *shim) misbehave(w http.ResponseWriter, inj *injection, this types.ManagedObjectReference) {
	switch inj.Action {
	case "reset":
		hj, ok := w.(http.Hijacker)
		if !ok {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		conn, _, err := hj.Hijack()
		if err != nil {
			return
		}
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0) // RST rather than FIN
		}
		_ = conn.Close()
	case "status":
		w.WriteHeader(inj.Status)
	default:
		fault, _ := faultByName(inj.Fault)
		if na, ok := fault.(*types.NotAuthenticated); ok {
			na.Object = this // as vcsim fills it
			na.PrivilegeId = "System.View"
		}
		msg := inj.Message
		if msg == "" {
			msg = faultMessages[inj.Fault]
		}
		if msg == "" {
			msg = inj.Fault
		}
		writeFault(w, msg, fault)
	}
}

// authenticated replays the caller's cookies on a CurrentTime call through
// vcsim itself: the session rules stay vcsim's.
func (s *shim) authenticated(r *http.Request) bool {
	const probe = xml.Header + `<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">` +
		`<soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this>` +
		`</CurrentTime></soapenv:Body></soapenv:Envelope>`
	req := httptest.NewRequest(http.MethodPost, r.URL.Path, strings.NewReader(probe))
	req.RemoteAddr = r.RemoteAddr
	for _, c := range r.Header.Values("Cookie") {
		req.Header.Add("Cookie", c)
	}
	req.Header.Set("User-Agent", r.UserAgent())
	rec := httptest.NewRecorder()
	s.inner.ServeHTTP(rec, req)
	return rec.Code == http.StatusOK
}

// decode reads a request body into its vim25 type; on failure it answers
// the fault vcsim gives for undecodable requests.
func decode(w http.ResponseWriter, body []byte) interface{} {
	m, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil {
		writeFault(w, err.Error(), new(types.InvalidRequest))
		return nil
	}
	return m.Body
}

// lookupVM finds a VM, answering ManagedObjectNotFound when there is none.
func lookupVM(w http.ResponseWriter, ref types.ManagedObjectReference) *simulator.VirtualMachine {
	if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
		return vm
	}
	writeFault(w, fmt.Sprintf("managed object not found: %s", ref), &types.ManagedObjectNotFound{Obj: ref})
	return nil
}

func invalidPowerState(w http.ResponseWriter, want, have types.VirtualMachinePowerState) {
	writeFault(w, fmt.Sprintf("The attempted operation cannot be performed in the current state (%s).", have),
		&types.InvalidPowerState{RequestedState: want, ExistingState: have})
}

func powerState(vm *simulator.VirtualMachine) types.VirtualMachinePowerState {
	var state types.VirtualMachinePowerState
	simulator.Map.WithLock(vm, func() { state = vm.Runtime.PowerState })
	return state
}

// putUsbScanCodes records the key events of a running VM, as the console
// would receive them, and answers how many there were.
func (s *shim) putUsbScanCodes(w http.ResponseWriter, body []byte) {
	req, ok := decode(w, body).(*types.PutUsbScanCodes)
	if !ok {
		return
	}
	vm := lookupVM(w, req.This)
	if vm == nil {
		return
	}
	if st := powerState(vm); st != types.VirtualMachinePowerStatePoweredOn {
		invalidPowerState(w, types.VirtualMachinePowerStatePoweredOn, st)
		return
	}
	events := make([]keyEvent, 0, len(req.Spec.KeyEvents))
	for _, e := range req.Spec.KeyEvents {
		ev := keyEvent{UsbHidCode: e.UsbHidCode}
		if m := e.Modifiers; m != nil {
			ev.Modifiers = modifiers{
				LeftControl: isTrue(m.LeftControl), LeftShift: isTrue(m.LeftShift),
				LeftAlt: isTrue(m.LeftAlt), LeftGui: isTrue(m.LeftGui),
				RightControl: isTrue(m.RightControl), RightShift: isTrue(m.RightShift),
				RightAlt: isTrue(m.RightAlt), RightGui: isTrue(m.RightGui),
			}
		}
		events = append(events, ev)
	}
	s.mu.Lock()
	s.keys[req.This.Value] = append(s.keys[req.This.Value], events...)
	s.mu.Unlock()
	writeResult(w, &struct {
		XMLName   xml.Name `xml:"urn:vim25 PutUsbScanCodesResponse"`
		Returnval int32    `xml:"returnval"`
	}{Returnval: int32(len(events))})
}

func isTrue(b *bool) bool { return b != nil && *b }

// ======================================================================
// Test endpoints
// ======================================================================

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *shim) serveTest(w http.ResponseWriter, r *http.Request) {
	route := r.Method + " " + r.URL.Path
	switch route {
	case "GET /shim/usbscancodes":
		s.mu.Lock()
		out := make(map[string][]keyEvent, len(s.keys))
		for k, v := range s.keys {
			out[k] = append([]keyEvent(nil), v...)
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	case "GET /shim/calls":
		s.mu.Lock()
		out := make(map[string]int, len(s.calls))
		for k, v := range s.calls {
			out[k] = v
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	case "POST /shim/calls/reset":
		s.mu.Lock()
		s.calls = map[string]int{}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]int{})
	case "POST /shim/sessions/drop":
		n, err := s.dropSessions()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"dropped": n})
	case "POST /shim/inject":
		var inj injection
		if err := json.NewDecoder(r.Body).Decode(&inj); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "inject: " + err.Error()})
			return
		}
		if msg := s.inject(&inj); msg != "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": msg})
			return
		}
		writeJSON(w, http.StatusOK, inj)
	case "GET /shim/vms":
		writeJSON(w, http.StatusOK, inventory())
	case "GET /shim/requests":
		method := r.URL.Query().Get("method")
		s.mu.Lock()
		body, ok := s.reqs[method]
		s.mu.Unlock()
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{
				"error": fmt.Sprintf("no %q request recorded (not called since the start)", method)})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"method": method, "body": string(body)})
	case "GET /shim/rest":
		writeJSON(w, http.StatusOK, s.restLog())
	case "POST /shim/rest/reset":
		s.mu.Lock()
		s.rest = nil
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, []restCall{})
	case "GET /shim/uploads":
		s.mu.Lock()
		out := append([]upload{}, s.uploads...)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such shim endpoint: " + route})
	}
}

// inject checks and stores an injection; returns an error message or "".
func (s *shim) inject(inj *injection) string {
	if inj.Method == "" {
		return "inject: 'method' is required"
	}
	switch inj.Action {
	case "fault":
		if _, ok := faultByName(inj.Fault); !ok {
			return fmt.Sprintf("inject: %q is not a vim25 fault type", inj.Fault)
		}
	case "reset", "lost":
	case "delay":
		if inj.DelayMS <= 0 {
			return "inject: 'delay_ms' must be positive"
		}
	case "slow":
		if inj.Method != "ExportVm" {
			return "inject: 'slow' is for ExportVm"
		}
		if inj.DelayMS <= 0 {
			return "inject: 'delay_ms' must be positive"
		}
	case "status":
		if inj.Status < 100 || inj.Status > 599 {
			return "inject: 'status' must be an HTTP status"
		}
	default:
		return fmt.Sprintf("inject: unknown action %q (fault, reset, lost, status, delay, slow)", inj.Action)
	}
	if inj.Count == nil {
		one := 1
		inj.Count = &one
	}
	if *inj.Count < 0 {
		return "inject: 'count' must not be negative"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if *inj.Count == 0 {
		delete(s.injects, inj.Method)
		return ""
	}
	stored := *inj
	n := *inj.Count
	stored.Count = &n
	s.injects[inj.Method] = &stored
	return ""
}

// inProcess is a vim25 client bound to the simulator itself (no HTTP), with
// vcsim's internal session.
func (s *shim) inProcess() (*vim25.Client, error) {
	s.clientOnce.Do(func() {
		s.client, s.clientErr = vim25.NewClient(context.Background(), s.svc)
	})
	return s.client, s.clientErr
}

// dropSessions ends every client session, as their expiry would: the next
// call on one gets NotAuthenticated.
func (s *shim) dropSessions() (int, error) {
	c, err := s.inProcess()
	if err != nil {
		return 0, err
	}
	ctx := context.Background()
	ref := *c.ServiceContent.SessionManager
	var sm mo.SessionManager
	if err := property.DefaultCollector(c).RetrieveOne(ctx, ref, []string{"sessionList"}, &sm); err != nil {
		return 0, err
	}
	var ids []string
	for _, us := range sm.SessionList {
		ids = append(ids, us.Key)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	_, err = methods.TerminateSession(ctx, c, &types.TerminateSession{This: ref, SessionId: ids})
	if err != nil {
		log.Printf("shim: dropping sessions: %s", err)
		return 0, err
	}
	return len(ids), nil
}

type vmInfo struct {
	Ref      string `json:"ref"`
	Name     string `json:"name"`
	Power    string `json:"power"`
	Template bool   `json:"template"`
	IP       string `json:"ip,omitempty"`
}

// inventory lists every VM of the simulator, sorted by moref.
func inventory() []vmInfo {
	out := []vmInfo{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		simulator.Map.WithLock(vm, func() {
			info := vmInfo{Ref: vm.Self.Value, Name: vm.Name, Power: string(vm.Runtime.PowerState)}
			if vm.Config != nil {
				info.Template = vm.Config.Template
			}
			if vm.Guest != nil {
				info.IP = vm.Guest.IpAddress
			}
			out = append(out, info)
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ref < out[j].Ref })
	return out
}

// ======================================================================
// Datastore uploads
// ======================================================================

// uploadKeep is the largest upload whose bytes are kept (seed CDs, markers;
// not install ISOs).
const uploadKeep = 4 << 20

// upload is what one PUT on /folder carried.
type upload struct {
	Path   string `json:"path"` // "[LocalDS_0] dir/file"
	Size   int64  `json:"size"`
	Sha256 string `json:"sha256"`
	Status int    `json:"status"`         // vcsim's answer
	Data   []byte `json:"data,omitempty"` // the bytes (base64 in JSON), up to uploadKeep
}

// statusRecorder remembers the status vcsim answered.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// keepWriter hashes everything and keeps the first `left` bytes.
type keepWriter struct {
	buf   bytes.Buffer
	left  int64
	total int64
	over  bool
}

func (k *keepWriter) Write(p []byte) (int, error) {
	k.total += int64(len(p))
	if !k.over {
		if int64(len(p)) <= k.left {
			k.buf.Write(p)
			k.left -= int64(len(p))
		} else {
			k.over = true
			k.buf.Reset()
		}
	}
	return len(p), nil
}

// recordUpload passes a datastore PUT to vcsim, noting its path, size,
// sha256 and (when small) its bytes on the way.
func (s *shim) recordUpload(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	keep := &keepWriter{left: uploadKeep}
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.TeeReader(r.Body, io.MultiWriter(h, keep)), r.Body}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	s.inner.ServeHTTP(rec, r)
	path := strings.TrimPrefix(r.URL.Path, "/folder/") // decoded already
	if ds := r.URL.Query().Get("dsName"); ds != "" {
		path = fmt.Sprintf("[%s] %s", ds, path)
	}
	up := upload{Path: path, Size: keep.total, Sha256: hex.EncodeToString(h.Sum(nil)), Status: rec.status}
	if !keep.over {
		up.Data = keep.buf.Bytes()
	}
	s.mu.Lock()
	s.uploads = append(s.uploads, up)
	s.mu.Unlock()
}
