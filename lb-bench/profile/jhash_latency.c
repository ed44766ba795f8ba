/*
 * The latency of the kernel's hash of a BPF hash map key, by key width.
 *
 * htab_map_hash() (kernel/bpf/hashtab.c) hashes a key whose size is a
 * multiple of 4 with jhash2() over its 32-bit words. A lookup cannot load
 * its bucket before the hash is done, so the hash's latency, not its
 * throughput, is what a packet pays. This program times jhash2() (copied
 * from include/linux/jhash.h) with each call's seed taken from the last
 * result, so that calls do not overlap, for keys of 3 to 10 words: the
 * IPv4 conntrack key (Ct4Key) is 4 words, the IPv6 one (Ct6Key) 10.
 *
 *   gcc -O2 -o /tmp/jhash_latency lb-bench/profile/jhash_latency.c
 *   taskset -c 1 /tmp/jhash_latency
 *
 * See docs/per-packet-profile.md, "The IPv6 gap: the key's hash".
 */
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static inline uint32_t rol32(uint32_t w, unsigned s) { return (w << s) | (w >> (32 - s)); }

#define __jhash_mix(a, b, c)                                                                                           \
	{                                                                                                              \
		a -= c; a ^= rol32(c, 4);  c += b;                                                                     \
		b -= a; b ^= rol32(a, 6);  a += c;                                                                     \
		c -= b; c ^= rol32(b, 8);  b += a;                                                                     \
		a -= c; a ^= rol32(c, 16); c += b;                                                                     \
		b -= a; b ^= rol32(a, 19); a += c;                                                                     \
		c -= b; c ^= rol32(b, 4);  b += a;                                                                     \
	}

#define __jhash_final(a, b, c)                                                                                         \
	{                                                                                                              \
		c ^= b; c -= rol32(b, 14);                                                                             \
		a ^= c; a -= rol32(c, 11);                                                                             \
		b ^= a; b -= rol32(a, 25);                                                                             \
		c ^= b; c -= rol32(b, 16);                                                                             \
		a ^= c; a -= rol32(c, 4);                                                                              \
		b ^= a; b -= rol32(a, 14);                                                                             \
		c ^= b; c -= rol32(b, 24);                                                                             \
	}

#define JHASH_INITVAL 0xdeadbeef

static __attribute__((noinline)) uint32_t jhash2(const uint32_t *k, uint32_t length, uint32_t initval)
{
	uint32_t a, b, c;

	a = b = c = JHASH_INITVAL + (length << 2) + initval;
	while (length > 3) {
		a += k[0];
		b += k[1];
		c += k[2];
		__jhash_mix(a, b, c);
		length -= 3;
		k += 3;
	}
	switch (length) {
	case 3: c += k[2]; /* fall through */
	case 2: b += k[1]; /* fall through */
	case 1: a += k[0];
		__jhash_final(a, b, c);
	case 0: break;
	}
	return c;
}

int main(void)
{
	uint32_t key[10] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
	const long calls = 50000000;

	for (uint32_t words = 3; words <= 10; words++) {
		struct timespec t0, t1;
		uint32_t h = 0;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (long i = 0; i < calls; i++) {
			key[0] = (uint32_t)i;
			h = jhash2(key, words, h);
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		double ns = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / calls;
		printf("%2u words (%2u-byte key): %5.2f ns per hash (%08x)\n", words, 4 * words, ns, h);
	}
	return 0;
}
