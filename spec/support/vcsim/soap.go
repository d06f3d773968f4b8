// SOAP plumbing of the shim: finding the method of a request, and writing
// responses and faults in the shape vcsim itself uses (faults: HTTP 500,
// soapenv:Fault with <detail><XFault xmlns="urn:vim25" xsi:type="X">).
package main

import (
	"bytes"
	stdxml "encoding/xml"
	"net/http"
	"reflect"

	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// soapCall returns the local name of the first element inside the SOAP
// Body ("Login", "PutUsbScanCodes"), or "" when the body is not SOAP, and
// the call's _this.
func soapCall(body []byte) (string, types.ManagedObjectReference) {
	var this types.ManagedObjectReference
	d := stdxml.NewDecoder(bytes.NewReader(body))
	inBody, method := false, ""
	for {
		tok, err := d.Token()
		if err != nil {
			if !inBody || method == "" {
				return "", this
			}
			return method, this
		}
		start, ok := tok.(stdxml.StartElement)
		switch {
		case !ok:
		case method != "":
			// the first element inside the method: _this, if any
			if start.Name.Local == "_this" {
				for _, a := range start.Attr {
					if a.Name.Local == "type" {
						this.Type = a.Value
					}
				}
				_ = d.DecodeElement(&this.Value, &start)
			}
			return method, this
		case inBody:
			method = start.Name.Local
		default:
			inBody = start.Name.Local == "Body"
		}
	}
}

type envelope struct {
	XMLName xml.Name `xml:"soapenv:Envelope"`
	Env     string   `xml:"xmlns:soapenv,attr"`
	XSD     string   `xml:"xmlns:xsd,attr"`
	XSI     string   `xml:"xmlns:xsi,attr"`
	Body    struct {
		Content interface{}
	} `xml:"soapenv:Body"`
}

type soapFault struct {
	XMLName xml.Name `xml:"soapenv:Fault"`
	Code    string   `xml:"faultcode"`
	String  string   `xml:"faultstring"`
	Detail  struct {
		Fault faultDetail
	} `xml:"detail"`
}

// faultDetail writes a fault as <KindFault xmlns="urn:vim25" xsi:type="Kind">.
type faultDetail struct {
	fault types.BaseMethodFault
}

func (d faultDetail) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := reflect.TypeOf(d.fault).Elem().Name()
	start.Name = xml.Name{Local: kind + "Fault"}
	start.Attr = []xml.Attr{
		{Name: xml.Name{Local: "xmlns"}, Value: "urn:vim25"},
		{Name: xml.Name{Local: "xsi:type"}, Value: kind},
	}
	return e.EncodeElement(d.fault, start)
}

func writeEnvelope(w http.ResponseWriter, status int, content interface{}) {
	env := envelope{
		Env: "http://schemas.xmlsoap.org/soap/envelope/",
		XSD: "http://www.w3.org/2001/XMLSchema",
		XSI: "http://www.w3.org/2001/XMLSchema-instance",
	}
	env.Body.Content = content
	var out bytes.Buffer
	out.WriteString(xml.Header)
	if err := xml.NewEncoder(&out).Encode(&env); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
}

// writeResult answers a call; res is a struct with an XMLName in urn:vim25.
func writeResult(w http.ResponseWriter, res interface{}) {
	writeEnvelope(w, http.StatusOK, res)
}

// writeFault answers a call with a SOAP fault, as vcsim does: HTTP 500.
func writeFault(w http.ResponseWriter, msg string, fault types.BaseMethodFault) {
	f := &soapFault{Code: "ServerFaultCode", String: msg}
	f.Detail.Fault = faultDetail{fault}
	writeEnvelope(w, http.StatusInternalServerError, f)
}

// faultByName makes an empty fault of a vim25 type ("NotAuthenticated").
func faultByName(name string) (types.BaseMethodFault, bool) {
	typ, ok := types.TypeFunc()(name)
	if !ok {
		return nil, false
	}
	f, ok := reflect.New(typ).Interface().(types.BaseMethodFault)
	return f, ok
}

// faultMessages are the faultstrings real vSphere sends for faults tests
// inject by name; other faults get their name.
var faultMessages = map[string]string{
	"NotAuthenticated":  "The session is not authenticated.",
	"InvalidLogin":      "Cannot complete login due to an incorrect user name or password.",
	"RestrictedVersion": restrictedMessage,
	"SystemError":       "A general system error occurred: injected",
	"HostCommunication": "An error occurred communicating with the remote host.",
}

const restrictedMessage = "Current license or ESXi version prohibits execution of the requested operation."
