// SPDX-License-Identifier: MIT OR Apache-2.0
// Baselines for cpn's benchmarks, built with clang at bench time (see bench/src/peers.rs).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// The cheapest XDP program: the per-packet cost floor of BPF_PROG_TEST_RUN and of a veth hop.
SEC("xdp")
int xdp_noop(struct xdp_md *ctx)
{
	return XDP_PASS;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_packets SEC(".maps");

// The throughput sink: counts every frame that reaches it, then drops it.
SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&sink_packets, &zero);

	if (count)
		*count += 1;
	return XDP_DROP;
}

char _license[] SEC("license") = "Dual MIT/GPL";
