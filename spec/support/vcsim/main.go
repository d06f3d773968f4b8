// Command vcsim stands in for vCenter (or a standalone ESXi host with -esx)
// in capil's tests of its vSphere backend. It runs the vSphere simulator of
// govmomi 0.24.2 as Debian packages it (golang-github-vmware-govmomi-dev):
// the vim25 SOAP API on /sdk, datastore files on /folder, NFC transfers on
// /nfc and the vAPI REST endpoints on /rest (the content library among
// them; rest.go adds the login check, /api/session and a request log,
// api.go the /api form of the content library routes).
//
// The shim (shim.go, export.go, guest.go) is OUR extension, not govmomi's:
// it stands in for vCenter behaviour that vcsim 0.24.2 lacks —
// PutUsbScanCodes, ExportVm with a real HttpNfcLease and downloadable disks,
// VMware Tools reporting a guest IP after power-on, the ESXi free licence
// (-restricted) — and adds test-only endpoints under /shim/ (recorded key
// events, SOAP call counts, dropping sessions, injected faults and connection
// resets, the VM inventory).
//
// Build offline (see spec/support/vcsim.lua, which does this):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=<dir> go build -o vcsim .
//
// Once listening it prints one line "VCSIM_URL=<url>" (no credentials) on
// stdout. SIGINT or SIGTERM closes the server and removes the model's temp
// datastore directory.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // registers the /rest endpoints
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address host:port (port 0: a free one, see VCSIM_URL)")
	username := flag.String("username", "", "the only user name Login accepts (default: any non-empty)")
	password := flag.String("password", "", "the only password Login accepts (with -username)")
	cert := flag.String("cert", "", "PEM certificate: serve HTTPS (needs -key); default plain HTTP")
	key := flag.String("key", "", "PEM private key of -cert")
	esx := flag.Bool("esx", false, "simulate a standalone ESXi host (ha-datacenter) instead of vCenter")
	restricted := flag.Bool("restricted", false, "ESXi free licence: write methods answer RestrictedVersion")
	sessionIdle := flag.Duration("session-idle", 0, "expire sessions idle this long (0: never)")
	guestIP := flag.String("guest-ip", "", "IPv4 address VMware Tools reports after a VM powers on")
	guestIPDelay := flag.Duration("guest-ip-delay", 500*time.Millisecond, "time from power-on to the guest IP report")
	exportDisk := flag.String("export-disk", "", "file an export serves for a disk without data (a streamOptimized VMDK)")
	api := flag.Bool("api", false, "serve /api as vSphere 7.0 U2+ does: the session and the content library, OVF and VM template routes (default: /api answers 404)")
	trace := flag.Bool("trace", false, "dump SOAP requests and responses to stderr")
	flag.Parse()

	if (*cert == "") != (*key == "") {
		log.Fatal("vcsim: -cert and -key go together")
	}
	if (*username == "") != (*password == "") {
		log.Fatal("vcsim: -username and -password go together")
	}
	if *guestIP != "" && !validIPv4(*guestIP) {
		log.Fatalf("vcsim: -guest-ip %q is not an IPv4 address", *guestIP)
	}

	simulator.Trace = *trace
	simulator.SessionIdleTimeout = *sessionIdle

	model := simulator.VPX()
	if *esx {
		model = simulator.ESX()
	}
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: creating the model: %s", err)
	}

	model.Service.RegisterEndpoints = true
	model.Service.Listen = &url.URL{Host: *listen}
	if *username != "" {
		model.Service.Listen.User = url.UserPassword(*username, *password)
	}
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			model.Remove()
			log.Fatalf("vcsim: loading %s and %s: %s", *cert, *key, err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	}

	server := model.Service.NewServer()
	sh := newShim(model.Service, server.Config.Handler, shimOptions{
		restricted:   *restricted,
		guestIP:      *guestIP,
		guestIPDelay: *guestIPDelay,
		exportDisk:   *exportDisk,
		username:     *username,
		password:     *password,
		api:          *api,
	})
	server.Config.Handler = sh

	u := *server.URL
	u.User = nil
	fmt.Printf("VCSIM_URL=%s\n", u.String())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	got := <-sig
	log.Printf("vcsim: %s: stopping", got)

	// Close waits for open requests (a WaitForUpdatesEx can hold one for
	// minutes): give it half a second, then remove the datastore dir regardless.
	done := make(chan struct{})
	go func() {
		server.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(500 * time.Millisecond):
		log.Printf("vcsim: requests still open after 0.5 s; leaving them")
	}
	model.Remove()
	log.Printf("vcsim: stopped")
}
