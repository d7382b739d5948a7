package nbd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
)

// ClientOptions configure ClientGo.
type ClientOptions struct {
	Export     string
	Structured bool // ask for structured replies first
	BlockSize  bool // ask for NBD_INFO_BLOCK_SIZE (promising to honour it)
	// TLS, for ClientConnect: upgrade with STARTTLS first (the server's
	// name and roots, as for any TLS client).
	TLS *tls.Config
}

// An OptionError is an error reply from the server during negotiation.
type OptionError struct {
	Option  Option
	Type    ReplyType
	Message string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("nbd: server refused %v (reply %#x): %s", e.Option, uint32(e.Type), e.Message)
}

// ClientGo runs the client side of a fixed newstyle handshake ending in
// NBD_OPT_GO: the minimal client the exporter's tests (and, later, dst
// attach nbd://) use. It returns what the server said about the export
// and whether structured replies were agreed.
func ClientGo(rw io.ReadWriter, o ClientOptions) (ExportInfo, bool, error) {
	_, info, structured, err := clientGo(rw, nil, o)
	return info, structured, err
}

// ClientConnect is ClientGo on a connection, upgraded to TLS with
// STARTTLS first when o.TLS is set; it returns the connection to use for
// the transmission phase.
func ClientConnect(c net.Conn, o ClientOptions) (net.Conn, ExportInfo, bool, error) {
	rw, info, structured, err := clientGo(c, c, o)
	if err != nil {
		return nil, info, false, err
	}
	return rw.(net.Conn), info, structured, nil
}

func clientGo(rw io.ReadWriter, c net.Conn, o ClientOptions) (io.ReadWriter, ExportInfo, bool, error) {
	info, structured, err := clientGoLoop(&rw, c, o)
	return rw, info, structured, err
}

func clientGoLoop(rwp *io.ReadWriter, c net.Conn, o ClientOptions) (ExportInfo, bool, error) {
	rw := *rwp
	var info ExportInfo
	var g [GreetingLen]byte
	if _, err := io.ReadFull(rw, g[:]); err != nil {
		return info, false, fmt.Errorf("nbd: read greeting: %w", err)
	}
	hf, err := ParseGreeting(g[:])
	if err != nil {
		return info, false, err
	}
	if hf&FlagFixedNewstyle == 0 {
		return info, false, perr("greeting", "server is not fixed newstyle")
	}
	cf := ClientFixedNewstyle
	if hf&FlagNoZeroes != 0 {
		cf |= ClientNoZeroes
	}
	if _, err := rw.Write(be.AppendUint32(nil, cf)); err != nil {
		return info, false, fmt.Errorf("nbd: write client flags: %w", err)
	}
	if o.TLS != nil {
		if c == nil {
			return info, false, errors.New("nbd: TLS needs a net.Conn (ClientConnect)")
		}
		if _, err := rw.Write(AppendOption(nil, OptStartTLS, nil)); err != nil {
			return info, false, fmt.Errorf("nbd: write STARTTLS: %w", err)
		}
		h, d, err := readOptionReply(rw)
		if err != nil {
			return info, false, err
		}
		if h.Type != RepAck {
			return info, false, &OptionError{Option: OptStartTLS, Type: h.Type, Message: string(d)}
		}
		tc := tls.Client(c, o.TLS)
		if err := tc.Handshake(); err != nil {
			return info, false, fmt.Errorf("nbd: TLS handshake: %w", err)
		}
		rw = tc
		*rwp = rw
	}
	structured := false
	if o.Structured {
		if _, err := rw.Write(AppendOption(nil, OptStructuredReply, nil)); err != nil {
			return info, false, fmt.Errorf("nbd: write option: %w", err)
		}
		h, d, err := readOptionReply(rw)
		if err != nil {
			return info, false, err
		}
		structured = h.Type == RepAck && len(d) == 0
	}
	req := InfoRequest{Name: o.Export, Infos: []InfoType{InfoName}}
	if o.BlockSize {
		req.Infos = append(req.Infos, InfoBlockSize)
	}
	if _, err := rw.Write(AppendOption(nil, OptGo, AppendInfoRequest(nil, req))); err != nil {
		return info, false, fmt.Errorf("nbd: write GO: %w", err)
	}
	info.Name = o.Export
	for {
		h, d, err := readOptionReply(rw)
		if err != nil {
			return info, false, err
		}
		if h.Option != OptGo {
			return info, false, perr("option reply", "reply to %v while waiting for GO", h.Option)
		}
		switch {
		case h.Type.IsError():
			return info, false, &OptionError{Option: OptGo, Type: h.Type, Message: string(d)}
		case h.Type == RepAck:
			return info, structured, nil
		case h.Type == RepInfo:
			in, err := ParseInfo(d)
			if err != nil {
				return info, false, err
			}
			switch in.Type {
			case InfoExport:
				info.Size, info.Flags = in.Size, in.Flags
			case InfoBlockSize:
				info.MinBlock, info.PrefBlock, info.MaxBlock = in.MinBlock, in.PrefBlock, in.Max
			case InfoName:
				info.Name = in.Text
			case InfoDescription:
				info.Description = in.Text
			}
		default:
			return info, false, perr("option reply", "unexpected reply type %#x to GO", uint32(h.Type))
		}
	}
}

func readOptionReply(r io.Reader) (OptionReplyHeader, []byte, error) {
	var b [OptionReplyHeaderLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return OptionReplyHeader{}, nil, fmt.Errorf("nbd: read option reply: %w", err)
	}
	h, err := ParseOptionReplyHeader(b[:])
	if err != nil {
		return h, nil, err
	}
	d := make([]byte, h.Length)
	if _, err := io.ReadFull(r, d); err != nil {
		return h, nil, fmt.Errorf("nbd: read option reply data: %w", err)
	}
	return h, d, nil
}
