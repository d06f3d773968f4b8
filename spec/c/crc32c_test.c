/*
** crc32c_test.c — CRC32C in engine/hash.c: known answers (RFC 3720 B.4 and
** the "123456789" check value), the SSE4.2 path against the table path on
** every length and alignment, and incremental use.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t capil_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t capil_crc32c_sw(uint32_t crc, const void *buf, size_t len);

static int failures = 0;

static void expect(const char *what, uint32_t got, uint32_t want) {
  if (got != want) {
    fprintf(stderr, "FAIL %s: got %08x, want %08x\n", what, got, want);
    failures++;
  }
}

int main(void) {
  unsigned char buf[32];
  expect("check value", capil_crc32c(0, "123456789", 9), 0xE3069283u);
  expect("check value (table)", capil_crc32c_sw(0, "123456789", 9), 0xE3069283u);
  expect("empty", capil_crc32c(0, "", 0), 0);
  memset(buf, 0, sizeof buf);
  expect("32 zeros", capil_crc32c(0, buf, 32), 0x8A9136AAu);
  memset(buf, 0xFF, sizeof buf);
  expect("32 ones", capil_crc32c(0, buf, 32), 0x62A8AB43u);
  for (int i = 0; i < 32; i++) buf[i] = (unsigned char)i;
  expect("incrementing", capil_crc32c(0, buf, 32), 0x46DD794Eu);
  for (int i = 0; i < 32; i++) buf[i] = (unsigned char)(31 - i);
  expect("decrementing", capil_crc32c(0, buf, 32), 0x113FDB5Cu);

  /* both paths agree on every length and alignment, in one go or in pieces */
  enum { N = 4096 };
  unsigned char *data = malloc(N + 16);
  uint32_t x = 2463534242u;
  for (int i = 0; i < N + 16; i++) {
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    data[i] = (unsigned char)x;
  }
  for (size_t off = 0; off < 16; off++) {
    for (size_t len = 0; len <= 300; len++) {
      uint32_t a = capil_crc32c(0, data + off, len), b = capil_crc32c_sw(0, data + off, len);
      if (a != b) {
        fprintf(stderr, "FAIL off %zu len %zu: hw %08x sw %08x\n", off, len, a, b);
        failures++;
      }
    }
  }
  uint32_t whole = capil_crc32c_sw(0, data, N);
  uint32_t parts = 0;
  for (size_t off = 0, step = 1; off < N; off += step, step = step * 3 % 97 + 1) {
    size_t n = off + step > N ? N - off : step;
    parts = capil_crc32c(parts, data + off, n);
  }
  expect("incremental", parts, whole);
  free(data);
  if (failures) return 1;
  printf("crc32c: all tests passed\n");
  return 0;
}
