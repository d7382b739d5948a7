// Package crypto protects DST frames: unkeyed checksums (CRC-32C, SHA-256,
// BLAKE3) and authenticated encryption (AES-256-GCM, ChaCha20-Poly1305)
// with a pre-shared key, as specified in docs/PROTOCOL.md §8. It holds the
// crypto part of the handshake (negotiation, X25519 + PSK key exchange,
// key confirmation), the key schedule (HKDF-SHA256), frame sealing and
// opening, key files, and a worker pool that seals and opens in parallel
// while frames keep their order.
//
// Only standard constructions are used: crypto/aes + crypto/cipher GCM,
// golang.org/x/crypto/chacha20poly1305, crypto/ecdh X25519, crypto/hkdf,
// crypto/hmac, crypto/sha256, hash/crc32 (Castagnoli) and
// github.com/zeebo/blake3.
//
// # Handshake
//
// A Handshake is one side's view. It is fed the HELLO and the WELCOME
// exactly as they went over the wire (the transcript) and, for a keyed
// suite, exchanges the FINISHED messages itself:
//
//	// client (txn)                          // exporter (export)
//	hs, _ := crypto.NewClient(cfg)           hs, _ := crypto.NewServer(cfg)
//	hello.Crypto = hs.HelloAttr()            // read HELLO through a tee:
//	hello.TagSize = hs.TagSize()             //   wire.ReadHello(io.TeeReader(br, &rec))
//	// write it through a tee:               if err := hs.Hello(rec.Bytes()); err != nil {
//	//   wire.WriteHello(io.MultiWriter(         refuse with err.(*wire.HandshakeError).Refuse()
//	//     conn, &rec), hello)               }
//	hs.Hello(rec.Bytes())                    welcome.Crypto = hs.WelcomeAttr()
//	// read WELCOME through a tee            welcome.TagSize = hs.TagSize()
//	if err := hs.Welcome(rec.Bytes());       // write through a tee, then
//	    err != nil { close }                 hs.Welcome(rec.Bytes())
//	sess, err := hs.Finish(conn)             sess, err := hs.Finish(conn)
//
// Refusals on the exporter side are *wire.HandshakeError (UNSUPPORTED for
// crypto on one side only or different suites); a failed key confirmation
// matches ErrKeyMismatch on both sides.
//
// # Frames
//
// A Session has a Sealer for the frames this side writes and an Opener for
// those it reads. Every frame (header, payload, trailer of TagSize bytes)
// takes the next number of its direction; the number is not sent, so Next
// must be called in stream order: by the writer in the order frames are
// written, by the reader in the order headers are read. The Frame it
// returns can then be sealed or opened on any goroutine:
//
//	f, err := sess.Send.Next(len(payload)) // serial, stream order
//	f.Seal(hdr, payload, trailer)          // anywhere; AEAD: trailer = body[n:n+T]
//	f.SealTo(hdr, plaintext, body)         // keeps plaintext (client WRITE: resends)
//
//	f, err := sess.Recv.Next(hdr's payload length)
//	err = f.Open(hdr, payload, trailer)    // in place
//	err = f.OpenTo(hdr, body, dst)         // body = payload ‖ trailer → dst
//
// Open returns ErrCorrupt (checksum) or ErrAuth (AEAD): the frame is lost
// (not executed, not answered; counted); the next frame opens normally.
// Sealer.Seal/SealTo and Opener.Open/OpenTo combine Next with the work for
// inline use. Nothing on this path allocates.
//
// # Pool
//
// A Pool of workers (Min..Max, growing when its queue backs up, shrinking
// when idle) serves Queues; each Queue delivers its jobs in submission
// order (WireGuard's container lock). Jobs with payloads up to the queue's
// inline threshold (DefaultInline) are processed by the submitter.
//
//	q := pool.NewQueue(depth, crypto.DefaultInline(sess.Suite))
//	// producer (serial):                    // consumer (serial, another goroutine):
//	j.Frame, _ = sess.Send.Next(n)           for { j, ok := q.Next(); if !ok { break }
//	j.Hdr, j.Payload, j.Body = ...               write j.Hdr, j.Body }
//	q.Submit(j)
package crypto
