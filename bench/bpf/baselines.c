// SPDX-License-Identifier: MIT OR Apache-2.0
// Baselines for cpn's benchmarks, built with clang at bench time (see bench/src/peers.rs).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// The cheapest XDP program: the per-packet cost floor of BPF_PROG_TEST_RUN, and the program
// on the dut's ingress veth for the kernel's own forwarding arms.
SEC("xdp")
int xdp_noop(struct xdp_md *ctx)
{
	return XDP_PASS;
}

// The floor under an affinity miss: what the kernel's LRU hash costs for one lookup that
// misses and one insert, in a table of cpn's flow table's shape (40-byte key, 16-byte value,
// the bench's 2^20 entries), and nothing else. The key is the packet's two IPv6 addresses;
// the bench removes the entries after every batch, as it does for the miss arms.
#define FLOOR_FLOWS (1 << 20)
struct floor_key {
	__u64 words[5];
};
struct floor_entry {
	__u64 words[2];
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FLOOR_FLOWS);
	__type(key, struct floor_key);
	__type(value, struct floor_entry);
} floor_flows SEC(".maps");

SEC("xdp")
int xdp_flow_insert(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	// Word loads at a 2-byte-aligned offset: x86 and the verifier allow them in packets.
	__u64 *addrs = data + sizeof(struct ethhdr) + 8;
	struct floor_entry entry = {};
	struct floor_key key;

	if ((void *)(addrs + 4) > data_end)
		return XDP_PASS;
	key.words[0] = addrs[0];
	key.words[1] = addrs[1];
	key.words[2] = addrs[2];
	key.words[3] = addrs[3];
	key.words[4] = 0;
	if (bpf_map_lookup_elem(&floor_flows, &key))
		return XDP_PASS;
	bpf_map_update_elem(&floor_flows, &key, &entry, BPF_ANY);
	return XDP_DROP;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_packets SEC(".maps");

// The throughput sink: counts the generator's frames as they arrive (IPv6 carrying UDP
// directly, or an SRH / IPv6 encapsulation of it), and drops everything. Neighbour discovery
// and MLD (ICMPv6, hop-by-hop) are not counted.
SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + sizeof(*eth);
	__u32 zero = 0;
	__u64 *count;

	if ((void *)(ip6 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return XDP_DROP;
	if (ip6->nexthdr != IPPROTO_UDP && ip6->nexthdr != IPPROTO_ROUTING &&
	    ip6->nexthdr != IPPROTO_IPV6)
		return XDP_DROP;
	count = bpf_map_lookup_elem(&sink_packets, &zero);
	if (count)
		*count += 1;
	return XDP_DROP;
}

// Set at load time: the interface the generator's frames leave by, the headers of its
// frame (Ethernet, IPv6, UDP), and how many flows it cycles through (UDP source ports from
// the headers' own onwards).
#define GEN_HEADERS 62
#define GEN_UDP_OFFSET (sizeof(struct ethhdr) + sizeof(struct ipv6hdr))
volatile const __u32 gen_ifindex = 0;
volatile const __u8 gen_headers[GEN_HEADERS] = {0};
volatile const __u32 gen_flows = 1;

// Frames this CPU's generator sent: picks the next flow. A generator thread is pinned to one
// CPU, so its count is its own.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_sent SEC(".maps");

// The traffic generator, run with BPF_PROG_TEST_RUN in live-frames mode: every run sends the
// test packet out of gen_ifindex. Live frames are recycled pages, and whoever handled a frame
// downstream (the dut's forwarding, an encapsulation) may have rewritten its headers in place,
// so they are written afresh on every run. With several flows, run n takes the source port
// `port + n % gen_flows` and the UDP checksum follows (RFC 1624 incremental update), so
// every frame stays a valid IPv6/UDP datagram. gen_flows is a load-time constant: with one
// flow the verifier drops that branch and the program is the single-flow one.
SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *bytes = data;

	if (data + GEN_HEADERS > data_end)
		return XDP_ABORTED;
#pragma clang loop unroll(full)
	for (int i = 0; i < GEN_HEADERS; i++)
		bytes[i] = gen_headers[i];
	if (gen_flows > 1) {
		struct udphdr *udp = data + GEN_UDP_OFFSET;
		__u32 zero = 0;
		__u64 *sent = bpf_map_lookup_elem(&gen_sent, &zero);
		__u16 port, step, check;
		__u32 sum;

		if (!sent)
			return XDP_ABORTED;
		step = *sent % gen_flows;
		*sent += 1;
		port = bpf_ntohs(udp->source);
		sum = (__u16)~bpf_ntohs(udp->check) + (__u16)~port + (__u16)(port + step);
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		check = ~sum;
		udp->source = bpf_htons(port + step);
		// A UDP checksum over IPv6 that comes out 0 is sent as 0xffff (RFC 8200, 8.1).
		udp->check = bpf_htons(check ? check : 0xffff);
	}
	return bpf_redirect(gen_ifindex, 0);
}

char _license[] SEC("license") = "Dual MIT/GPL";

// The cheapest TC program: the floor of BPF_PROG_TEST_RUN on a socket buffer (the kernel
// builds one per call), against which the TC steering arms' net cost is taken.
SEC("classifier")
int tc_noop(struct __sk_buff *skb)
{
	return 0; // TC_ACT_OK
}
