package crypto

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
)

// The key schedule of PROTOCOL.md §8.4: HKDF-SHA256 (RFC 5869) in the
// shape of TLS 1.3's (RFC 8446 §7.1), with "dst1 " labels.

// Labels.
const (
	labelPSKSalt      = "dst1 psk"
	labelDerived      = "dst1 derived"
	labelExporterFin  = "dst1 exporter finished"
	labelClientFin    = "dst1 client finished"
	labelC2ETraffic   = "dst1 c2e traffic"
	labelE2CTraffic   = "dst1 e2c traffic"
	labelKey          = "dst1 key"
	labelIV           = "dst1 iv"
	labelNextEpoch    = "dst1 next"
	secretSize        = 32
	nonceSize         = 12
	confirmSize       = sha256.Size
	transcriptHashLen = sha256.Size
)

// schedule holds the secrets of one keyed handshake.
type schedule struct {
	fkE, fkC [secretSize]byte // finished keys: exporter's, client's
	c2e, e2c [secretSize]byte // traffic secrets of epoch 0
}

func extract(salt, ikm []byte) []byte {
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		panic("crypto: HKDF-Extract: " + err.Error()) // cannot happen with SHA-256
	}
	return prk
}

func expand(prk []byte, info string, out []byte) {
	b, err := hkdf.Expand(sha256.New, prk, info, len(out))
	if err != nil {
		panic("crypto: HKDF-Expand: " + err.Error()) // cannot happen for these lengths
	}
	copy(out, b)
	clear(b)
}

// deriveSchedule computes the handshake secrets from the PSK, the X25519
// shared secret and TH_1 = SHA-256(HELLO ‖ WELCOME).
func deriveSchedule(psk *Key, dhe []byte, th1 []byte) schedule {
	es := extract([]byte(labelPSKSalt), psk[:])
	var derived [secretSize]byte
	expand(es, labelDerived, derived[:])
	hs := extract(derived[:], dhe)
	var s schedule
	expand(hs, labelExporterFin, s.fkE[:])
	expand(hs, labelClientFin, s.fkC[:])
	expand(hs, labelC2ETraffic+string(th1), s.c2e[:])
	expand(hs, labelE2CTraffic+string(th1), s.e2c[:])
	clear(es)
	clear(derived[:])
	clear(hs)
	return s
}

// confirmTag is HMAC-SHA256(fk, th).
func confirmTag(fk *[secretSize]byte, th []byte) [confirmSize]byte {
	m := hmac.New(sha256.New, fk[:])
	m.Write(th)
	var out [confirmSize]byte
	m.Sum(out[:0])
	return out
}

// trafficKeys derives an epoch's key and IV from its traffic secret, and
// the secret of the next epoch.
func trafficKeys(secret *[secretSize]byte) (key [32]byte, iv [nonceSize]byte, next [secretSize]byte) {
	expand(secret[:], labelKey, key[:])
	expand(secret[:], labelIV, iv[:])
	expand(secret[:], labelNextEpoch, next[:])
	return
}
