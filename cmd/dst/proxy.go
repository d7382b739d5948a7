package main

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/dst-dev/dst/internal/wire"
	"github.com/dst-dev/dst/transport"
	"github.com/dst-dev/dst/transport/fault"
)

func proxyCommand() *cli.Command {
	return &cli.Command{
		Name:      "proxy",
		Usage:     "forward connections between clients and an exporter, injecting faults (testing)",
		ArgsUsage: " ",
		Description: "Accepts connections on --listen and forwards each to --to (a dst export), injecting\n" +
			"the faults asked for; clients attach to the proxy's URL instead of the exporter's.\n" +
			"Every random choice comes from --seed, so a run replays (times are real time).\n" +
			"Prints \"listening URL\" on stdout once ready; one log line per injected fault\n" +
			"(delays at debug level); SIGINT or SIGTERM closes every connection and exits.\n\n" +
			"Faults, each off by default:\n" +
			"  --delay/--jitter      hold each frame (or chunk) back DELAY + random [0, JITTER)\n" +
			"  --cut-every D         close each proxied connection D after it opened (mid-frame)\n" +
			"  --partition-every D --partition-for F\n" +
			"                        D after a connection opened, nothing crosses for F\n" +
			"                        (--partition-lose: bytes written meanwhile are lost, then cut)\n" +
			"  --stall-after SIZE --stall-for D\n" +
			"                        once SIZE bytes passed in a direction, stop it for D\n" +
			"  --drop P              drop a whole frame with probability P (desynchronises the\n" +
			"                        stream: the exporter must close, the client reconnect)\n" +
			"  --corrupt P           flip one bit of a frame (chunk) with probability P; only\n" +
			"                        meaningful with checksums on\n" +
			"  --reorder P           send a frame after the next one with probability P\n" +
			"                        (requests and replies only, never the handshake)\n" +
			"--direction limits the per-frame faults (delay, drop, corrupt, reorder, stall) to\n" +
			"requests (client to exporter) or replies. --drop and --reorder parse DST frames\n" +
			"and need a stream without crypto trailers.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Usage: "accept clients on `URL` (dst://HOST:PORT, dst+unix://PATH; port 0 picks one)"},
			&cli.StringFlag{Name: "to", Usage: "forward to the exporter at `URL`"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "`N` seeds every random choice"},
			&cli.StringFlag{Name: "direction", Value: "both", Usage: "per-frame faults on `requests|replies|both`"},
			&cli.DurationFlag{Name: "delay", Usage: "hold each frame back `D`"},
			&cli.DurationFlag{Name: "jitter", Usage: "plus a random [0, `D`)"},
			&cli.DurationFlag{Name: "cut-every", Usage: "cut each connection `D` after it opened"},
			&cli.DurationFlag{Name: "partition-every", Usage: "partition each connection `D` after it opened"},
			&cli.DurationFlag{Name: "partition-for", Usage: "for `D`"},
			&cli.BoolFlag{Name: "partition-lose", Usage: "lose what is written during a partition (then cut)"},
			&cli.StringFlag{Name: "stall-after", Usage: "stall a direction once `SIZE` bytes passed"},
			&cli.DurationFlag{Name: "stall-for", Usage: "for `D`"},
			&cli.Float64Flag{Name: "drop", Usage: "drop a frame with probability `P`"},
			&cli.Float64Flag{Name: "corrupt", Usage: "flip a bit of a frame with probability `P`"},
			&cli.Float64Flag{Name: "reorder", Usage: "swap a frame with the next with probability `P`"},
			&cli.DurationFlag{Name: "reorder-hold", Value: fault.DefaultReorderHold, Usage: "longest wait `D` of a held frame for the next"},
		},
		Action: runProxy,
	}
}

// proxySettings is the checked command line of dst proxy.
type proxySettings struct {
	listen, to string
	seed       uint64
	cfg        fault.Config
}

// proxyConfig checks the command line, before anything listens.
func proxyConfig(c *cli.Context) (proxySettings, error) {
	var s proxySettings
	if c.NArg() > 0 {
		return s, usagef("proxy takes no arguments (got %q)", c.Args().First())
	}
	s.listen, s.to, s.seed = c.String("listen"), c.String("to"), c.Uint64("seed")
	if s.listen == "" {
		return s, usagef("--listen is required: the URL clients attach to")
	}
	if s.to == "" {
		return s, usagef("--to is required: the exporter's URL")
	}
	if u, err := transport.ParseURL(s.listen); err != nil {
		return s, usagef("--listen: %v", err)
	} else if u.Export != "" {
		return s, usagef("--listen %s: a listen URL names no export", s.listen)
	}
	if _, err := transport.ParseURL(s.to); err != nil {
		return s, usagef("--to: %v", err)
	}
	for _, name := range []string{"delay", "jitter", "cut-every", "partition-every", "partition-for", "stall-for", "reorder-hold"} {
		if c.Duration(name) < 0 {
			return s, usagef("--%s %v is negative", name, c.Duration(name))
		}
	}
	for _, name := range []string{"drop", "corrupt", "reorder"} {
		if p := c.Float64(name); !(p >= 0 && p <= 1) {
			return s, usagef("--%s %v: want a probability from 0 to 1", name, p)
		}
	}
	if (c.Duration("partition-every") > 0) != (c.Duration("partition-for") > 0) {
		return s, usagef("--partition-every and --partition-for go together")
	}
	if c.Bool("partition-lose") && c.Duration("partition-for") == 0 {
		return s, usagef("--partition-lose needs --partition-every and --partition-for")
	}
	var stallAfter uint64
	if v := c.String("stall-after"); v != "" {
		n, err := parseSize(v)
		if err != nil {
			return s, usagef("--stall-after: %v", err)
		}
		stallAfter = n
	}
	if (c.String("stall-after") != "") != (c.Duration("stall-for") > 0) {
		return s, usagef("--stall-after and --stall-for go together")
	}
	up, down := true, true
	switch d := c.String("direction"); d {
	case "both":
	case "requests":
		down = false
	case "replies":
		up = false
	default:
		return s, usagef("--direction %q: want requests, replies or both", d)
	}
	drop, reorder := c.Float64("drop"), c.Float64("reorder")
	rules := func(requests bool) fault.Rules {
		r := fault.Rules{
			Delay: c.Duration("delay"), Jitter: c.Duration("jitter"),
			DropProb: drop, CorruptProb: c.Float64("corrupt"),
			ReorderProb: reorder, ReorderHold: c.Duration("reorder-hold"),
			StallAfter: int64(stallAfter), StallFor: c.Duration("stall-for"),
		}
		if drop > 0 || reorder > 0 {
			// Whole DST frames: a framer per connection (it follows the
			// handshake), and only requests and replies move.
			r.NewFramer = func() fault.Framer { return fault.Framer(wire.NewStreamFramer(requests)) }
			r.CanReorder = func(f []byte) bool { return binary.LittleEndian.Uint32(f) != wire.HandshakeMagic }
		}
		return r
	}
	if up {
		s.cfg.Write = rules(true)
	}
	if down {
		s.cfg.Read = rules(false)
	}
	s.cfg.CutAt = c.Duration("cut-every")
	if d := c.Duration("partition-every"); d > 0 {
		s.cfg.Partition = fault.Partition{After: d, For: c.Duration("partition-for"), Lose: c.Bool("partition-lose")}
	}
	s.cfg.Name = "proxy"
	return s, nil
}

// faultCounter counts the proxy's fault log lines by kind.
type faultCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

var faultKinds = []string{"cut", "partition", "stall", "drop", "corrupt", "reorder", "delay"}

// kindOf names the fault a log line of transport/fault reports ("" for
// other lines: listening, accept errors, heals).
func kindOf(line string) string {
	for _, k := range faultKinds {
		if strings.Contains(line, ": "+k+" ") || strings.Contains(line, ": "+k+":") {
			if k == "partition" && !strings.Contains(line, "partition: start") {
				return ""
			}
			return k
		}
	}
	return ""
}

func (fc *faultCounter) log(line string) {
	k := kindOf(line)
	if k != "" {
		fc.mu.Lock()
		fc.counts[k]++
		fc.mu.Unlock()
	}
	switch k {
	case "delay":
		log.Debug(line)
	case "":
		log.Info(line)
	default:
		log.Info("fault injected", zap.String("kind", k), zap.String("what", line))
	}
}

func (fc *faultCounter) fields() []zap.Field {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	var fs []zap.Field
	for _, k := range faultKinds {
		fs = append(fs, zap.Int(k, fc.counts[k]))
	}
	return fs
}

func runProxy(c *cli.Context) error {
	s, err := proxyConfig(c)
	if err != nil {
		return err
	}
	counter := &faultCounter{counts: map[string]int{}}
	s.cfg.Log = counter.log
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	p := &fault.Proxy{Listen: s.listen, Target: s.to, Fault: s.cfg, Rand: rand.New(rand.NewPCG(s.seed, s.seed))}
	if err := p.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "listening %s\n", p.URL())
	log.Info("proxy ready", zap.Stringer("listen", p.URL()), zap.String("to", s.to), zap.Uint64("seed", s.seed))
	<-ctx.Done()
	why := "context ended"
	if c.Context.Err() == nil {
		why = "signal"
	}
	err = p.Close()
	log.Info("proxy stopped", append([]zap.Field{zap.String("why", why)}, counter.fields()...)...)
	if err != nil {
		return fmt.Errorf("proxy: close: %w", err)
	}
	return nil
}
