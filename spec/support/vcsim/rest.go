// The shim's part in the vSphere Automation REST API. vcsim 0.24.2 serves
// the content library on /rest (vapi/simulator, registered in main.go) and
// accepts any non-empty user name and password there; the shim adds what
// capil's publish specs need of a real vCenter: the -username/-password
// check on session create (401 with the vAPI error body vCenter sends),
// /api/session as vSphere 7.0 U2+ serves it and the /api form of the
// content library, OVF and VM template routes capil uses (with -api, see
// api.go; without, /api/... answers 404 as vCenter 6.5-7.0 does), a log of every REST request
// (GET /shim/rest), injected failures of REST calls (/shim/inject with
// the call's name, see restCallName), and the OVF library item filter
// answering with the descriptor's networks as vCenter does (vcsim's names
// none, so no deploy could map a network; see ovfFilter).
package main

import (
	"bytes"
	"encoding/json"
	"io/ioutil"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/ovf"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	restSessionPath = "/rest/com/vmware/cis/session"
	restDataPath    = "/rest/com/vmware/cis/data/"
	apiSessionPath  = "/api/session"
	ovfItemPath     = "/rest/com/vmware/vcenter/ovf/library-item/id:"
)

// restCall is one REST request the simulator answered.
type restCall struct {
	Name   string `json:"name"`   // see restCallName
	Method string `json:"method"` // GET, POST, ...
	Path   string `json:"path"`
	Action string `json:"action,omitempty"` // ~action
	Status int    `json:"status"`
}

// restCallName names a REST request for the log and for injections:
// "<METHOD> <path>[?~action=<action>]", with every "id:..." segment written
// "id:*" and the file data uploads as "PUT /rest/com/vmware/cis/data".
func restCallName(r *http.Request) string {
	p := r.URL.Path
	if strings.HasPrefix(p, "/api/") {
		return apiCallName(r)
	}
	if strings.HasPrefix(p, apiUploadPath) {
		return "PUT /cls/data"
	}
	if strings.HasPrefix(p, restDataPath) {
		p = strings.TrimSuffix(restDataPath, "/")
	}
	parts := strings.Split(p, "/")
	for i, seg := range parts {
		if strings.HasPrefix(seg, "id:") {
			parts[i] = "id:*"
		}
	}
	name := r.Method + " " + strings.Join(parts, "/")
	if a := r.URL.Query().Get("~action"); a != "" {
		name += "?~action=" + a
	}
	return name
}

// serveREST answers /rest/..., /api/... and /cls/data/... (the /api
// upload endpoints): injections first, then the
// session checks, then vcsim; every request is logged.
func (s *shim) serveREST(w http.ResponseWriter, r *http.Request) {
	name := restCallName(r)
	s.mu.Lock()
	inj := s.injects[name]
	var act injection
	if inj != nil {
		act = *inj
		if *inj.Count--; *inj.Count <= 0 {
			delete(s.injects, name)
		}
	}
	s.mu.Unlock()
	if inj != nil && act.Action == "delay" {
		time.Sleep(time.Duration(act.DelayMS) * time.Millisecond)
		inj = nil
	}
	rec := &statusRecorder{ResponseWriter: w}
	defer func() {
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		if inj != nil && act.Action == "reset" {
			status = 0
		}
		s.mu.Lock()
		action := r.URL.Query().Get("~action")
		if strings.HasPrefix(r.URL.Path, "/api/") {
			action = r.URL.Query().Get("action")
		}
		s.rest = append(s.rest, restCall{Name: name, Method: r.Method, Path: r.URL.Path,
			Action: action, Status: status})
		s.mu.Unlock()
	}()
	if inj != nil {
		if r.Body != nil {
			// a failed upload still reads (part of) what was sent
			_, _ = ioutil.ReadAll(http.MaxBytesReader(rec, r.Body, 64*1024))
		}
		if act.Action == "reset" {
			s.misbehave(w, &act, types.ManagedObjectReference{}) // hijacks the connection
		} else {
			s.misbehave(rec, &act, types.ManagedObjectReference{})
		}
		return
	}
	s.restRoute(rec, r)
}

// restRoute answers a REST request (unlogged; serveAPI's /rest requests
// come here too).
func (s *shim) restRoute(rec http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == restSessionPath && r.Method == http.MethodPost && r.URL.Query().Get("~action") == "":
		if !s.restLogin(rec, r, false) {
			return
		}
		s.inner.ServeHTTP(rec, r)
	case p == apiSessionPath && s.opts.api:
		s.apiSession(rec, r)
	case strings.HasPrefix(p, "/api/") && s.opts.api:
		s.serveAPI(rec, r)
	case strings.HasPrefix(p, "/api/"):
		// vCenter before 7.0 U2 has no /api
		rec.WriteHeader(http.StatusNotFound)
	case p == ovfCreatePath && r.Method == http.MethodPost && r.URL.Query().Get("~action") == "":
		s.ovfCapture(rec, r)
	case strings.HasPrefix(p, apiUploadPath) && s.opts.api:
		s.serveUpload(rec, r)
	case strings.HasPrefix(p, ovfItemPath) && r.URL.Query().Get("~action") == "filter":
		s.ovfFilter(rec, r, strings.TrimPrefix(p, ovfItemPath))
	default:
		s.inner.ServeHTTP(rec, r)
	}
}

// restLogin checks a session create's basic credentials against -username
// and -password; on a mismatch it answers 401 as vCenter does (the /rest or
// the /api error shape) and returns false.
func (s *shim) restLogin(w http.ResponseWriter, r *http.Request, api bool) bool {
	u, p, ok := r.BasicAuth()
	if ok && u != "" && p != "" && (s.opts.username == "" || (u == s.opts.username && p == s.opts.password)) {
		return true
	}
	msg := map[string]interface{}{
		"args": []string{}, "default_message": "Authentication required.",
		"id": "com.vmware.vapi.endpoint.method.authentication.required",
	}
	if api {
		writeJSON(w, http.StatusUnauthorized, map[string]interface{}{
			"error_type": "UNAUTHENTICATED", "messages": []interface{}{msg}})
	} else {
		writeJSON(w, http.StatusUnauthorized, map[string]interface{}{
			"type":  "com.vmware.vapi.std.errors.unauthenticated",
			"value": map[string]interface{}{"messages": []interface{}{msg}}})
	}
	return false
}

// apiSession serves /api/session (vSphere 7.0 U2+) on vcsim's /rest
// sessions: POST answers 201 and the bare session id, DELETE 204, GET the
// session's info unwrapped.
func (s *shim) apiSession(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
		if !s.restLogin(w, r, true) {
			return
		}
	case http.MethodDelete, http.MethodGet:
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	req := httptest.NewRequest(r.Method, restSessionPath, nil)
	req.Header = r.Header.Clone()
	req.Header.Set("vmware-use-header-authn", "true")
	rec := httptest.NewRecorder()
	s.inner.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		w.WriteHeader(rec.Code)
		return
	}
	var wrapped struct {
		Value json.RawMessage `json:"value"`
	}
	_ = json.NewDecoder(bytes.NewReader(rec.Body.Bytes())).Decode(&wrapped)
	switch r.Method {
	case http.MethodPost:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(wrapped.Value)
	case http.MethodDelete:
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(wrapped.Value)
	}
}

// restLog answers GET /shim/rest: the REST requests so far, in order.
func (s *shim) restLog() []restCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]restCall{}, s.rest...)
}

// ovfFilter answers POST .../ovf/library-item/id:ITEM?~action=filter as
// vCenter documents it (Ovf LibraryItem OvfSummary: name, annotation,
// EULAs, networks = the OVF descriptor's NetworkSection names), reading
// the descriptor vcsim stored for the item (its library's datastore
// directory, contentlib-LIBRARY/ITEM/*.ovf). Anything else (no session, no
// such item, a library without an .ovf) goes to vcsim unchanged.
func (s *shim) ovfFilter(w http.ResponseWriter, r *http.Request, id string) {
	var item struct {
		Name      string `json:"name"`
		LibraryID string `json:"library_id"`
	}
	var lib struct {
		Storage []struct {
			DatastoreID string `json:"datastore_id"`
		} `json:"storage_backings"`
	}
	if s.innerJSON(r, http.MethodGet, "/rest/com/vmware/content/library/item/id:"+id, nil, &item) != http.StatusOK ||
		s.innerJSON(r, http.MethodGet, "/rest/com/vmware/content/library/id:"+item.LibraryID, nil, &lib) != http.StatusOK ||
		len(lib.Storage) == 0 {
		s.inner.ServeHTTP(w, r)
		return
	}
	dir := filepath.Join(strings.SplitN(lib.Storage[0].DatastoreID, "@", 2)[0], "contentlib-"+item.LibraryID, id)
	descs, _ := filepath.Glob(filepath.Join(dir, "*.ovf"))
	if len(descs) == 0 {
		s.inner.ServeHTTP(w, r)
		return
	}
	f, err := os.Open(descs[0])
	if err != nil {
		s.inner.ServeHTTP(w, r)
		return
	}
	defer f.Close()
	env, err := ovf.Unmarshal(f)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]interface{}{
			"type": "com.vmware.vapi.std.errors.invalid_argument", "value": map[string]interface{}{
				"messages": []interface{}{map[string]interface{}{"default_message": err.Error()}}}})
		return
	}
	summary := map[string]interface{}{"name": item.Name, "EULAs": []string{}}
	var nets []string
	if env.Network != nil {
		for _, n := range env.Network.Networks {
			nets = append(nets, n.Name)
		}
	}
	if len(nets) > 0 {
		summary["networks"] = nets
	}
	if env.VirtualSystem != nil && len(env.VirtualSystem.Annotation) > 0 {
		summary["annotation"] = env.VirtualSystem.Annotation[0].Annotation
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{"value": summary})
}
