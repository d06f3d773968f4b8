// The OVF a content library item made from a VM holds. vCenter's OVF
// service (POST /rest/com/vmware/vcenter/ovf/library-item, "create": an
// OVF package of a VM or vApp captured into a library item, Packer's
// content_library_destination) exports the VM into the item: its
// descriptor and disks become the item's files, so the item deploys again
// (?~action=deploy). vcsim 0.24.2 makes the item but leaves it without any
// file, so nothing made that way could be deployed. The shim stands in for
// the capture: after vcsim answers, it writes a descriptor of the source
// VM (name, CPUs, memory, each NIC's network; no disks: vcsim's deploy
// imports the descriptor and never reads a disk) into the item through
// vcsim's own update-session API, as any client would, bypassing the
// request log.
package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io/ioutil"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const ovfCreatePath = "/rest/com/vmware/vcenter/ovf/library-item"

// innerJSON sends method path body to vcsim with r's headers (its session)
// and decodes the answer's "value" into v (when v is not nil); the status
// is returned, 0 when a 200's value does not decode into v.
func (s *shim) innerJSON(r *http.Request, method, path string, body interface{}, v interface{}) int {
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req := httptest.NewRequest(method, path, rd)
	req.Header = r.Header.Clone()
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	s.inner.ServeHTTP(rec, req)
	if v != nil && rec.Code == http.StatusOK {
		var wrapped struct {
			Value json.RawMessage `json:"value"`
		}
		if json.Unmarshal(rec.Body.Bytes(), &wrapped) != nil || json.Unmarshal(wrapped.Value, v) != nil {
			return 0
		}
	}
	return rec.Code
}

// ovfCapture answers an OVF library item create: vcsim makes the item,
// then the shim puts the source VM's descriptor in it (see above).
func (s *shim) ovfCapture(w http.ResponseWriter, r *http.Request) {
	body, err := ioutil.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	req := httptest.NewRequest(r.Method, r.URL.String(), bytes.NewReader(body))
	req.Header = r.Header.Clone()
	rec := httptest.NewRecorder()
	s.inner.ServeHTTP(rec, req)
	defer func() {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}()
	var in struct {
		Source struct {
			Type string `json:"type"`
			ID   string `json:"id"`
		} `json:"source"`
		Target struct {
			ItemID string `json:"library_item_id"`
		} `json:"target"`
		Spec struct {
			Name string `json:"name"`
		} `json:"create_spec"`
	}
	var out struct {
		Value struct {
			Succeeded bool   `json:"succeeded"`
			ID        string `json:"ovf_library_item_id"`
		} `json:"value"`
	}
	if rec.Code != http.StatusOK || json.Unmarshal(body, &in) != nil || json.Unmarshal(rec.Body.Bytes(), &out) != nil ||
		!out.Value.Succeeded || in.Source.Type != "VirtualMachine" {
		return
	}
	item := out.Value.ID
	if item == "" {
		item = in.Target.ItemID
	}
	desc, name := vmDescriptor(in.Source.ID)
	if desc == "" || item == "" {
		return
	}
	if in.Spec.Name != "" {
		name = in.Spec.Name
	}
	var sid string
	if s.innerJSON(r, http.MethodPost, "/rest/com/vmware/content/library/item/update-session",
		map[string]interface{}{"create_spec": map[string]string{"library_item_id": item}}, &sid) != http.StatusOK {
		return
	}
	var file struct {
		Endpoint struct {
			URI string `json:"uri"`
		} `json:"upload_endpoint"`
	}
	s.innerJSON(r, http.MethodPost, "/rest/com/vmware/content/library/item/updatesession/file/id:"+sid+"?~action=add",
		map[string]interface{}{"file_spec": map[string]interface{}{"name": name + ".ovf", "source_type": "PUSH",
			"size": len(desc)}}, &file)
	if u, err := url.Parse(file.Endpoint.URI); err == nil && u.Path != "" {
		put := httptest.NewRequest(http.MethodPut, u.Path, strings.NewReader(desc))
		put.Header = r.Header.Clone()
		put.Header.Set("Content-Type", "application/octet-stream")
		s.inner.ServeHTTP(httptest.NewRecorder(), put)
	}
	s.innerJSON(r, http.MethodPost, "/rest/com/vmware/content/library/item/update-session/id:"+sid+"?~action=complete",
		nil, nil)
}

// vmDescriptor is an OVF descriptor of VM id (its name, CPUs, memory and
// NICs' networks) and the VM's name; "" when there is no such VM.
func vmDescriptor(id string) (string, string) {
	obj := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: id})
	vm, ok := obj.(*simulator.VirtualMachine)
	if !ok || vm.Config == nil {
		return "", ""
	}
	var cpus, mem int64
	var nics []string
	var name string
	simulator.Map.WithLock(vm, func() {
		name = vm.Name
		cpus, mem = int64(vm.Config.Hardware.NumCPU), int64(vm.Config.Hardware.MemoryMB)
		for _, d := range vm.Config.Hardware.Device {
			nic, ok := d.(types.BaseVirtualEthernetCard)
			if !ok {
				continue
			}
			net := "VM Network"
			if b, ok := nic.GetVirtualEthernetCard().Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok &&
				b.DeviceName != "" {
				net = b.DeviceName
			}
			nics = append(nics, net)
		}
	})
	var items, nets strings.Builder
	id2 := 1
	item := func(rt int, label, extra string) {
		fmt.Fprintf(&items, "      <Item>\n        <rasd:ElementName>%s</rasd:ElementName>\n"+
			"        <rasd:InstanceID>%d</rasd:InstanceID>\n        <rasd:ResourceType>%d</rasd:ResourceType>\n%s"+
			"      </Item>\n", label, id2, rt, extra)
		id2++
	}
	item(3, fmt.Sprintf("%d virtual CPU(s)", cpus),
		fmt.Sprintf("        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>\n"+
			"        <rasd:VirtualQuantity>%d</rasd:VirtualQuantity>\n", cpus))
	item(4, fmt.Sprintf("%dMB of memory", mem),
		fmt.Sprintf("        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>\n"+
			"        <rasd:VirtualQuantity>%d</rasd:VirtualQuantity>\n", mem))
	seen := map[string]bool{}
	for i, n := range nics {
		item(10, fmt.Sprintf("Network adapter %d", i+1),
			fmt.Sprintf("        <rasd:Connection>%s</rasd:Connection>\n"+
				"        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>\n", esc(n)))
		if !seen[n] {
			seen[n] = true
			fmt.Fprintf(&nets, "    <Network ovf:name=\"%s\">\n      <Description>%s</Description>\n    </Network>\n",
				esc(n), esc(n))
		}
	}
	return fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References/>
  <NetworkSection>
    <Info>The list of logical networks</Info>
%s  </NetworkSection>
  <VirtualSystem ovf:id="%s">
    <Info>A virtual machine (captured from %s by the simulator shim)</Info>
    <Name>%s</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-15</vssd:VirtualSystemType>
      </System>
%s    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`, nets.String(), esc(name), esc(id), esc(name), items.String()), name
}

// esc is s escaped for XML text and attribute values.
func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
