/*
** vmdkw_test.c — the encodings of engine/vmdkw.c: the SparseExtentHeader's
** bytes (field offsets of VMware's Virtual Disk Format 5.0, as qemu's
** block/vmdk.c reads them), the CHS geometry qemu-img writes, and the
** embedded descriptor.
*/
#include <stdint.h>
#include <stdio.h>
#include <string.h>

uint64_t capil_vmdk_cylinders(uint64_t sectors, const char *adapter);
void capil_vmdk_header(unsigned char h[512], uint64_t capacity, uint64_t gd_offset);
int capil_vmdk_descriptor(char *buf, size_t size, uint32_t cid, uint64_t capacity,
                          const char *name, const char *adapter, int hwversion);

static int failures = 0;

static void expect_u64(const char *what, uint64_t got, uint64_t want) {
  if (got != want) {
    fprintf(stderr, "FAIL %s: got %llu, want %llu\n", what, (unsigned long long)got,
            (unsigned long long)want);
    failures++;
  }
}

static uint64_t le(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

int main(void) {
  /* geometry: qemu-img's figures for 100 MiB ide, 3 GiB lsilogic, 600 GiB ide */
  expect_u64("100M ide", capil_vmdk_cylinders(204800, "ide"), 203);
  expect_u64("3G lsilogic", capil_vmdk_cylinders(6291456, "lsilogic"), 391);
  expect_u64("600G ide", capil_vmdk_cylinders(600ull << 21, "ide"), 1248304);
  expect_u64("empty", capil_vmdk_cylinders(0, "buslogic"), 0);

  unsigned char h[512];
  capil_vmdk_header(h, 6291456, UINT64_MAX);
  if (memcmp(h, "KDMV", 4) != 0) { fprintf(stderr, "FAIL magic\n"); failures++; }
  expect_u64("version", le(h + 4, 4), 3);
  expect_u64("flags", le(h + 8, 4), 0x30001);
  expect_u64("capacity", le(h + 12, 8), 6291456);
  expect_u64("grainSize", le(h + 20, 8), 128);
  expect_u64("descriptorOffset", le(h + 28, 8), 1);
  expect_u64("descriptorSize", le(h + 36, 8), 20);
  expect_u64("numGTEsPerGT", le(h + 44, 4), 512);
  expect_u64("rgdOffset", le(h + 48, 8), 0);
  expect_u64("gdOffset", le(h + 56, 8), UINT64_MAX);
  expect_u64("overHead", le(h + 64, 8), 128);
  expect_u64("uncleanShutdown", h[72], 0);
  if (memcmp(h + 73, "\n \r\n", 4) != 0) { fprintf(stderr, "FAIL newline check\n"); failures++; }
  expect_u64("compressAlgorithm", le(h + 77, 2), 1);
  for (int i = 79; i < 512; i++)
    if (h[i]) { fprintf(stderr, "FAIL padding byte %d\n", i); failures++; break; }
  capil_vmdk_header(h, 1, 4242);
  expect_u64("footer gdOffset", le(h + 56, 8), 4242);

  char d[10240];
  int n = capil_vmdk_descriptor(d, sizeof d, 0xabcdef01u, 6291456, "disk.vmdk", "lsilogic", 15);
  if (n <= 0) { fprintf(stderr, "FAIL descriptor\n"); failures++; }
  const char *want[] = {"# Disk DescriptorFile\n", "CID=abcdef01\n", "parentCID=ffffffff\n",
    "createType=\"streamOptimized\"\n", "RW 6291456 SPARSE \"disk.vmdk\"\n",
    "ddb.virtualHWVersion = \"15\"\n", "ddb.geometry.cylinders = \"391\"\n",
    "ddb.geometry.heads = \"255\"\n", "ddb.geometry.sectors = \"63\"\n",
    "ddb.adapterType = \"lsilogic\"\n", "ddb.toolsVersion = \"2147483647\"\n", NULL};
  for (int i = 0; n > 0 && want[i]; i++)
    if (!strstr(d, want[i])) { fprintf(stderr, "FAIL descriptor lacks %s", want[i]); failures++; }
  if (capil_vmdk_descriptor(d, 64, 1, 1, "x.vmdk", "ide", 4) != -1) {
    fprintf(stderr, "FAIL descriptor overflow not reported\n");
    failures++;
  }
  if (failures) return 1;
  printf("vmdkw_test: ok\n");
  return 0;
}
