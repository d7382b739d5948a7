package nbd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
)

// ExportInfo is what the server says about an export.
type ExportInfo struct {
	Name        string // canonical name (INFO_NAME)
	Description string
	Size        uint64
	Flags       TransmissionFlags // HasFlags is added by Negotiate
	// Block size constraints (INFO_BLOCK_SIZE): powers of two, min ≤
	// preferred ≤ max, min ≤ 64 KiB, preferred ≥ 512.
	MinBlock, PrefBlock, MaxBlock uint32
}

// Handler answers the server's questions during negotiation.
type Handler interface {
	// Exports lists the exports for NBD_OPT_LIST.
	Exports() []ExportInfo
	// Export looks one up for INFO, GO and EXPORT_NAME. It returns
	// ErrUnknownExport, ErrPolicy, ErrShutdown or another error
	// (answered NBD_REP_ERR_PLATFORM).
	Export(name string) (ExportInfo, error)
}

// Errors a Handler returns, and Negotiate's own outcomes.
var (
	ErrUnknownExport = errors.New("nbd: no such export")
	ErrPolicy        = errors.New("nbd: denied by policy")
	ErrShutdown      = errors.New("nbd: server shutting down")
	// ErrAborted: the client sent NBD_OPT_ABORT (or closed the connection
	// between options); not a protocol violation.
	ErrAborted = errors.New("nbd: client ended the negotiation")
)

// MaxOptions bounds the option requests of one negotiation.
const MaxOptions = 256

// Negotiated is the outcome of a successful negotiation.
type Negotiated struct {
	Export ExportInfo
	// Structured: NBD_OPT_STRUCTURED_REPLY was acknowledged.
	Structured bool
	// BlockSizeAgreed: the client asked for NBD_INFO_BLOCK_SIZE in its GO,
	// so it promised to honour the constraints.
	BlockSizeAgreed bool
	// Via is how the export was chosen: OptGo or OptExportName.
	Via Option
}

// Negotiate runs the server side of the fixed newstyle handshake on rw:
// the greeting, the client flags, then option haggling until GO or
// EXPORT_NAME picks an export. Every read is bounded (MaxOptionLen,
// MaxOptions); the caller sets deadlines on the connection. It returns
// ErrAborted when the client gives up, a *ProtocolError when it breaks
// the protocol, and I/O errors as they come (wrapped).
//
// Choices where the spec leaves room: STARTTLS is answered
// NBD_REP_ERR_UNSUP here (NegotiateServer can do TLS), as are meta
// contexts, extended headers and unknown options; INFO_BLOCK_SIZE is sent only when asked for, and
// GO without it is still accepted (the server then handles unaligned
// requests itself); EXPORT_NAME of an unknown export closes the
// connection, the only answer the protocol has for it.
func Negotiate(rw io.ReadWriter, h Handler) (*Negotiated, error) {
	_, n, err := negotiateRW(rw, nil, h, ServerOptions{})
	return n, err
}

// ServerOptions configure NegotiateServer.
type ServerOptions struct {
	// TLS, if set, lets clients upgrade with NBD_OPT_STARTTLS (the
	// certificate to present; client certificates as the config says).
	TLS *tls.Config
	// RequireTLS: until TLS is up, every option but STARTTLS and ABORT is
	// refused with NBD_REP_ERR_TLS_REQD (EXPORT_NAME closes). Needs TLS.
	RequireTLS bool
}

// NegotiateServer is Negotiate on a connection that may be upgraded to
// TLS: it returns the connection to use from then on (c itself, or the
// *tls.Conn over it). The TLS handshake runs under c's deadlines. After
// STARTTLS everything negotiated before is forgotten, as the spec says.
func NegotiateServer(c net.Conn, h Handler, o ServerOptions) (net.Conn, *Negotiated, error) {
	if o.RequireTLS && o.TLS == nil {
		return nil, nil, errors.New("nbd: RequireTLS without a TLS config")
	}
	rw, n, err := negotiateRW(c, c, h, o)
	if err != nil {
		return nil, nil, err
	}
	return rw.(net.Conn), n, nil
}

// negotiateRW runs the handshake on rw; c (nil for Negotiate) is what
// STARTTLS wraps.
func negotiateRW(rw io.ReadWriter, c net.Conn, h Handler, opts ServerOptions) (io.ReadWriter, *Negotiated, error) {
	n, err := negotiateLoop(&rw, c, h, opts)
	return rw, n, err
}

func negotiateLoop(rwp *io.ReadWriter, c net.Conn, h Handler, opts ServerOptions) (*Negotiated, error) {
	rw := *rwp
	if _, err := rw.Write(AppendGreeting(nil, FlagFixedNewstyle|FlagNoZeroes)); err != nil {
		return nil, fmt.Errorf("nbd: write greeting: %w", err)
	}
	var fb [4]byte
	if _, err := io.ReadFull(rw, fb[:]); err != nil {
		return nil, fmt.Errorf("nbd: read client flags: %w", err)
	}
	cflags, err := ParseClientFlags(fb[:])
	if err != nil {
		return nil, err
	}
	fixed := cflags&ClientFixedNewstyle != 0
	noZeroes := cflags&ClientNoZeroes != 0
	var n Negotiated
	tlsUp := false
	var hb [OptionHeaderLen]byte
	out := make([]byte, 0, 256)
	for i := 0; ; i++ {
		if _, err := io.ReadFull(rw, hb[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, ErrAborted
			}
			return nil, fmt.Errorf("nbd: read option: %w", err)
		}
		oh, err := ParseOptionHeader(hb[:])
		if err != nil {
			return nil, err
		}
		if i >= MaxOptions {
			return nil, perr("negotiation", "more than %d options", MaxOptions)
		}
		data := make([]byte, oh.Length)
		if _, err := io.ReadFull(rw, data); err != nil {
			return nil, fmt.Errorf("nbd: read option %v data: %w", oh.Option, err)
		}
		out = out[:0]
		done := false
		if opts.RequireTLS && !tlsUp && oh.Option != OptStartTLS && oh.Option != OptAbort {
			if oh.Option == OptExportName {
				return nil, fmt.Errorf("nbd: EXPORT_NAME before STARTTLS: %w", ErrPolicy)
			}
			if _, err := rw.Write(AppendOptionError(out, oh.Option, RepErrTLSReqd, "this server requires TLS: send STARTTLS first")); err != nil {
				return nil, fmt.Errorf("nbd: write reply to %v: %w", oh.Option, err)
			}
			continue
		}
		switch o := oh.Option; o {
		case OptExportName:
			name, err := ParseExportName(data)
			if err != nil {
				return nil, err
			}
			info, err := h.Export(name)
			if err != nil {
				// No error reply exists for EXPORT_NAME: close.
				return nil, fmt.Errorf("nbd: EXPORT_NAME %q: %w", name, err)
			}
			n.Export, n.Via, done = info, OptExportName, true
			out = AppendExportNameReply(out, info.Size, info.Flags|FlagHasFlags, noZeroes)
		case OptAbort:
			if fixed {
				_, _ = rw.Write(AppendOptionReply(out, o, RepAck, nil)) // best effort: the client may be gone
			}
			return nil, ErrAborted
		case OptList:
			if len(data) != 0 {
				out = AppendOptionError(out, o, RepErrInvalid, "LIST takes no data")
				break
			}
			for _, e := range h.Exports() {
				out = AppendServerReply(out, e.Name, e.Description)
			}
			out = AppendOptionReply(out, o, RepAck, nil)
		case OptStructuredReply:
			if len(data) != 0 {
				out = AppendOptionError(out, o, RepErrInvalid, "STRUCTURED_REPLY takes no data")
				break
			}
			n.Structured = true
			out = AppendOptionReply(out, o, RepAck, nil)
		case OptInfo, OptGo:
			req, err := ParseInfoRequest(data)
			if err != nil {
				out = AppendOptionError(out, o, RepErrInvalid, err.Error())
				break
			}
			info, err := h.Export(req.Name)
			if err != nil {
				out = AppendOptionError(out, o, exportErrorReply(err), err.Error())
				break
			}
			out = AppendInfoExport(out, o, info.Size, info.Flags|FlagHasFlags)
			if req.Wants(InfoName) {
				out = AppendInfoString(out, o, InfoName, info.Name)
			}
			if req.Wants(InfoDescription) && info.Description != "" {
				out = AppendInfoString(out, o, InfoDescription, info.Description)
			}
			bs := req.Wants(InfoBlockSize)
			if bs {
				out = AppendInfoBlockSize(out, o, info.MinBlock, info.PrefBlock, info.MaxBlock)
			}
			out = AppendOptionReply(out, o, RepAck, nil)
			if o == OptGo {
				n.Export, n.Via, n.BlockSizeAgreed, done = info, OptGo, bs, true
			}
		case OptStartTLS:
			switch {
			case opts.TLS == nil || c == nil:
				out = AppendOptionError(out, oh.Option, RepErrUnsup, "TLS is not supported by this server")
			case tlsUp:
				out = AppendOptionError(out, oh.Option, RepErrInvalid, "TLS is already up")
			case len(data) != 0:
				out = AppendOptionError(out, oh.Option, RepErrInvalid, "STARTTLS takes no data")
			default:
				if _, err := rw.Write(AppendOptionReply(out, oh.Option, RepAck, nil)); err != nil {
					return nil, fmt.Errorf("nbd: write reply to STARTTLS: %w", err)
				}
				tc := tls.Server(c, opts.TLS)
				if err := tc.Handshake(); err != nil {
					return nil, fmt.Errorf("nbd: TLS handshake: %w", err)
				}
				rw, tlsUp, n = tc, true, Negotiated{}
				*rwp = rw
				continue
			}
		default:
			if !fixed {
				return nil, perr("negotiation", "unsupported option %v from a client without fixed newstyle", o)
			}
			out = AppendOptionError(out, o, RepErrUnsup, "option "+o.String()+" is not supported")
		}
		if _, err := rw.Write(out); err != nil {
			return nil, fmt.Errorf("nbd: write reply to %v: %w", oh.Option, err)
		}
		if done {
			return &n, nil
		}
	}
}

func exportErrorReply(err error) ReplyType {
	switch {
	case errors.Is(err, ErrUnknownExport):
		return RepErrUnknown
	case errors.Is(err, ErrPolicy):
		return RepErrPolicy
	case errors.Is(err, ErrShutdown):
		return RepErrShutdown
	}
	return RepErrPlatform
}
