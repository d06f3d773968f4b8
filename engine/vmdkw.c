/*
** vmdkw.c — capil.core.vmdkw: writes a streamOptimized VMDK (the only disk
** kind an OVA may carry) from a raw disk image, in C, on zlib.
**
** Layout written (VMware "Virtual Disk Format 5.0", stream-optimized
** compressed sparse extent; every item starts on a 512-byte sector):
**
**   sector 0    SparseExtentHeader, gdOffset = GD_AT_END
**   sector 1    the embedded descriptor (DESC_SECTORS sectors)
**   sector 128  (overHead) grains, in LBA order, each a grain marker
**               {lba u64, size u32} then `size` bytes of zlib stream;
**               after the grains of one grain table's span: a GT marker
**               {numSectors u64 = 4, size u32 = 0, type u32 = 1} and the GT
**   then        GD marker (type 2) and the grain directory,
**               footer marker (type 3) and the footer (the header again,
**               with the real gdOffset), end-of-stream marker (type 0).
**
** Grains are 64 KiB (128 sectors), 512 entries per grain table. A grain
** that is all zeros is not written (its GTE stays 0), nor is a grain table
** whose grains all are (its GD entry stays 0). Each grain is compressed as
** qemu's block/vmdk.c does, zlib's compress() at Z_DEFAULT_COMPRESSION: an
** RFC 1950 stream, so the output is the size qemu-img's is.
**
** The source is read on the calling thread, walking its data extents with
** SEEK_DATA/SEEK_HOLE so a hole is never read; a pool of worker threads
** compresses; the calling thread writes the grains strictly in order. At
** most `slots` grains are in flight (jobs * 8, capped), each holding one
** 64 KiB input and one compressed buffer, so memory stays bounded whatever
** the disk's size. Output goes to "<out>.part.<pid>", renamed on success and
** removed on failure or Ctrl-C.
**
** Or into an open file at its current offset (capil.format.ova's fused
** pack writes the VMDK straight into the OVA's tar stream): nothing is
** renamed or removed then, the caller owns the file, and the bytes written
** can be hashed (SHA-256, OpenSSL EVP as engine/hash.c) on the writing
** thread as each 1 MiB buffer goes out, overlapped with the compression.
*/
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zlib.h>

#include "capil.h"

#define SECTOR 512u
#define GRAIN_SECTORS 128u
#define GRAIN_BYTES (GRAIN_SECTORS * SECTOR)
#define GTES_PER_GT 512u
#define GT_SECTORS (GTES_PER_GT * 4u / SECTOR)
#define DESC_OFFSET 1u
#define DESC_SECTORS 20u
#define OVERHEAD_SECTORS GRAIN_SECTORS
#define GD_AT_END UINT64_MAX
#define FLAG_NL_DETECT (1u << 0)
#define FLAG_COMPRESSED (1u << 16)
#define FLAG_MARKERS (1u << 17)
#define MARKER_EOS 0u
#define MARKER_GT 1u
#define MARKER_GD 2u
#define MARKER_FOOTER 3u
#define GRAIN_MARKER_BYTES 12u
#define MAX_JOBS 64
#define SLOTS_PER_JOB 8
#define MAX_SLOTS 128
#define OUTBUF_BYTES (1u << 20)
#define ECHANGED (-2)                   /* run_job: the source changed size */
#define ESHORT (-3)                     /* run_job: a stream source ended early */

/* exported for spec/c/vmdkw_test.c */
uint64_t capil_vmdk_cylinders(uint64_t sectors, const char *adapter);
void capil_vmdk_header(unsigned char h[SECTOR], uint64_t capacity, uint64_t gd_offset);
int capil_vmdk_descriptor(char *buf, size_t size, uint32_t cid, uint64_t capacity,
                          const char *name, const char *adapter, int hwversion);

/* ====================================================================== */
/* Header and descriptor                                                  */
/* ====================================================================== */

static void put_u16(unsigned char *p, uint16_t v) { p[0] = v & 0xff; p[1] = v >> 8; }
static void put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Cylinders of the disk's CHS geometry as qemu computes them: 63 sectors
** per track, 16 heads for IDE and 255 for the SCSI adapters, no clamping. */
uint64_t capil_vmdk_cylinders(uint64_t sectors, const char *adapter) {
  uint64_t heads = strcmp(adapter, "ide") == 0 ? 16 : 255;
  return sectors / (heads * 63);
}

/* The 512-byte SparseExtentHeader of a stream-optimized extent. */
void capil_vmdk_header(unsigned char h[SECTOR], uint64_t capacity, uint64_t gd_offset) {
  memset(h, 0, SECTOR);
  memcpy(h, "KDMV", 4);
  put_u32(h + 4, 3);
  put_u32(h + 8, FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS);
  put_u64(h + 12, capacity);
  put_u64(h + 20, GRAIN_SECTORS);
  put_u64(h + 28, DESC_OFFSET);
  put_u64(h + 36, DESC_SECTORS);
  put_u32(h + 44, GTES_PER_GT);
  put_u64(h + 48, 0);           /* rgdOffset: no redundant GD in a stream */
  put_u64(h + 56, gd_offset);
  put_u64(h + 64, OVERHEAD_SECTORS);
  h[72] = 0;                    /* uncleanShutdown */
  h[73] = '\n'; h[74] = ' '; h[75] = '\r'; h[76] = '\n';
  put_u16(h + 77, 1);           /* compressAlgorithm: deflate */
}

/* The embedded descriptor, with the DDB entries qemu-img writes (which
** vSphere reads); returns its length, or -1 when it does not fit. */
int capil_vmdk_descriptor(char *buf, size_t size, uint32_t cid, uint64_t capacity,
                          const char *name, const char *adapter, int hwversion) {
  int n = snprintf(buf, size,
    "# Disk DescriptorFile\n"
    "version=1\n"
    "CID=%08x\n"
    "parentCID=ffffffff\n"
    "createType=\"streamOptimized\"\n"
    "\n"
    "# Extent description\n"
    "RW %llu SPARSE \"%s\"\n"
    "\n"
    "# The Disk Data Base\n"
    "#DDB\n"
    "\n"
    "ddb.virtualHWVersion = \"%d\"\n"
    "ddb.geometry.cylinders = \"%llu\"\n"
    "ddb.geometry.heads = \"%d\"\n"
    "ddb.geometry.sectors = \"63\"\n"
    "ddb.adapterType = \"%s\"\n"
    "ddb.toolsVersion = \"2147483647\"\n",
    cid, (unsigned long long)capacity, name, hwversion,
    (unsigned long long)capil_vmdk_cylinders(capacity, adapter),
    strcmp(adapter, "ide") == 0 ? 16 : 255, adapter);
  return n < 0 || (size_t)n >= size ? -1 : n;
}

/* ====================================================================== */
/* The pipeline: read (caller) -> compress (workers) -> write (caller)    */
/* ====================================================================== */

enum { SLOT_FREE, SLOT_FILLED, SLOT_BUSY, SLOT_DONE };

typedef struct {
  int state;
  uint64_t grain;               /* index of the grain in the disk */
  unsigned char *in;            /* GRAIN_BYTES */
  unsigned char *out;           /* marker + zlib stream, sector padded */
  size_t out_len;               /* 0: an all-zero grain, nothing to write */
  int zerr;                     /* a zlib failure */
} Slot;

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t work;          /* a slot was filled, or stop */
  pthread_cond_t done;          /* a slot was compressed */
  Slot *slots;
  int nslots, level;
  uint64_t next_fill, next_take; /* sequence numbers (slot = seq % nslots) */
  int stop;
  size_t out_cap;
} Pool;

static int all_zero(const unsigned char *p, size_t n) {
  static const unsigned char z[4096];
  for (size_t i = 0; i < n; i += sizeof z)
    if (memcmp(p + i, z, n - i < sizeof z ? n - i : sizeof z) != 0) return 0;
  return 1;
}

/* Compresses one grain into its slot: grain marker + zlib stream, padded
** with zeros to a sector. The deflate state is reset, not rebuilt, per grain
** (compress() would allocate ~270 KiB each time); the bytes are the same. */
static void compress_slot(Slot *s, z_stream *z, size_t out_cap) {
  s->zerr = 0;
  if (all_zero(s->in, GRAIN_BYTES)) { s->out_len = 0; return; }
  deflateReset(z);
  z->next_in = s->in;
  z->avail_in = GRAIN_BYTES;
  z->next_out = s->out + GRAIN_MARKER_BYTES;
  z->avail_out = (uInt)(out_cap - GRAIN_MARKER_BYTES);
  if (deflate(z, Z_FINISH) != Z_STREAM_END) { s->zerr = 1; s->out_len = 0; return; }
  size_t clen = z->total_out;
  put_u64(s->out, s->grain * GRAIN_SECTORS);
  put_u32(s->out + 8, (uint32_t)clen);
  size_t len = GRAIN_MARKER_BYTES + clen;
  size_t padded = (len + SECTOR - 1) / SECTOR * SECTOR;
  memset(s->out + len, 0, padded - len);
  s->out_len = padded;
}

static void *worker(void *arg) {
  Pool *p = arg;
  z_stream z;
  memset(&z, 0, sizeof z);
  int zok = deflateInit(&z, p->level) == Z_OK;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stop && p->next_take == p->next_fill) pthread_cond_wait(&p->work, &p->mu);
    if (p->stop) break;
    Slot *s = &p->slots[p->next_take++ % (uint64_t)p->nslots];
    s->state = SLOT_BUSY;
    pthread_mutex_unlock(&p->mu);
    if (zok) compress_slot(s, &z, p->out_cap);
    else { s->zerr = 1; s->out_len = 0; }
    pthread_mutex_lock(&p->mu);
    s->state = SLOT_DONE;
    pthread_cond_broadcast(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
  if (zok) deflateEnd(&z);
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* Output: buffered sequential writes, every item sector-aligned          */
/* ---------------------------------------------------------------------- */

typedef struct {
  int fd;
  unsigned char *buf;
  size_t used;
  uint64_t offset;              /* bytes written or buffered so far */
  EVP_MD_CTX *sha;              /* digests what is written, when set */
} Out;

static int out_flush(Out *o) {
  size_t off = 0;
  if (o->sha && o->used && EVP_DigestUpdate(o->sha, o->buf, o->used) != 1) return ENOMEM;
  while (off < o->used) {
    ssize_t n = write(o->fd, o->buf + off, o->used - off);
    if (n < 0) {
      if (errno == EINTR && !capil_interrupted()) continue;
      return errno == EINTR ? EINTR : errno;
    }
    off += (size_t)n;
  }
  o->used = 0;
  return 0;
}

static int out_put(Out *o, const void *data, size_t n) {
  const unsigned char *d = data;
  while (n) {
    if (o->used == OUTBUF_BYTES) {
      int err = out_flush(o);
      if (err) return err;
    }
    size_t k = OUTBUF_BYTES - o->used < n ? OUTBUF_BYTES - o->used : n;
    memcpy(o->buf + o->used, d, k);
    o->used += k;
    o->offset += k;
    d += k;
    n -= k;
  }
  return 0;
}

/* A metadata marker sector: {numSectors u64, size u32 = 0, type u32}. */
static int out_marker(Out *o, uint64_t sectors, uint32_t type) {
  unsigned char m[SECTOR];
  memset(m, 0, sizeof m);
  put_u64(m, sectors);
  put_u32(m + 12, type);
  return out_put(o, m, sizeof m);
}

/* ---------------------------------------------------------------------- */
/* The job                                                                 */
/* ---------------------------------------------------------------------- */

typedef struct {
  const char *src, *out, *tmp, *adapter;
  const char *name;             /* the extent's file name in the descriptor */
  int jobs, hwversion, level;
  int into;                     /* into the caller's file: no fsync, and a source
                                ** that changes size fails (ECHANGED) */
  EVP_MD_CTX *sha;              /* digests the output, when set */
  struct capil_progress *prog;
  int stream;                   /* the source is a pipe or socket read in order */
  int stream_fd;                /* its fd (the caller's: not closed here) */
  uint64_t stream_size;         /* its size, given by the caller */
  /* results */
  uint64_t size, bytes, grains_written, grains_zero;
  uint64_t got;                 /* the source's bytes read (a stream's, when it ended) */
  const char *what;             /* the file an errno refers to */
  int zerr;
} Job;

/* Finds the next grain at or after `g` holding data: SEEK_DATA from the
** grain's start, remembering the data extent's end (SEEK_HOLE) so that
** consecutive data grains cost no syscall. Returns 0 with *next = the
** grain, or 0 with *next = ngrains when no data is left, or an errno. */
static int next_data_grain(int fd, uint64_t g, uint64_t ngrains, uint64_t size,
                           uint64_t *data_end, int *seekable, uint64_t *next) {
  if (g >= ngrains) { *next = ngrains; return 0; }
  uint64_t pos = g * GRAIN_BYTES;
  if (!*seekable || pos < *data_end) { *next = g; return 0; }
  off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
  if (d < 0) {
    if (errno == ENXIO) { *next = ngrains; return 0; }
    if (errno == EINVAL || errno == ENOTSUP) { *seekable = 0; *next = g; return 0; }
    return errno;
  }
  off_t h = lseek(fd, d, SEEK_HOLE);
  if (h < 0) {
    /* the file shrank below d since SEEK_DATA: no data left, as a read finds */
    if (errno == ENXIO) { *next = ngrains; return 0; }
    return errno;
  }
  *data_end = (uint64_t)h < size ? (uint64_t)h : size;
  *next = (uint64_t)d / GRAIN_BYTES;
  return 0;
}

/* Reads grain g, zero-padded past the end of the disk; 0 or an errno. A
** file is read at the grain's offset (pread), and a file that shrank reads
** as zeros (the caller checks its size after). A stream (seq) is read in
** order: its next GRAIN_BYTES (fewer at the end), and an end before `size`
** is ESHORT (*got_total: the bytes it carried). */
static int read_grain(int fd, uint64_t g, uint64_t size, unsigned char *buf, int seq, uint64_t *got_total) {
  uint64_t pos = g * GRAIN_BYTES;
  size_t want = size - pos < GRAIN_BYTES ? (size_t)(size - pos) : GRAIN_BYTES;
  size_t got = 0;
  while (got < want) {
    ssize_t n = seq ? read(fd, buf + got, want - got) : pread(fd, buf + got, want - got, (off_t)(pos + got));
    if (n < 0) {
      if (errno == EINTR && !capil_interrupted()) continue;
      return errno;
    }
    if (n == 0) {
      if (!seq) break;            /* the file shrank: the rest reads as zeros */
      *got_total = pos + got;
      return capil_interrupted() ? EINTR : ESHORT;
    }
    got += (size_t)n;
  }
  *got_total = pos + got;
  memset(buf + got, 0, GRAIN_BYTES - got);
  return 0;
}

/* Writes the grain table of the span that just ended (when it holds any
** grain) and records its sector in the GD. */
static int flush_gt(Out *o, uint32_t *gt, int *gt_used, uint32_t *gd, uint64_t gt_index) {
  if (!*gt_used) return 0;
  int err = out_marker(o, GT_SECTORS, MARKER_GT);
  if (err) return err;
  if (o->offset / SECTOR > UINT32_MAX) return EFBIG;
  gd[gt_index] = (uint32_t)(o->offset / SECTOR);
  unsigned char le[GTES_PER_GT * 4];
  for (unsigned i = 0; i < GTES_PER_GT; i++) put_u32(le + 4 * i, gt[i]);
  err = out_put(o, le, sizeof le);
  memset(gt, 0, GTES_PER_GT * sizeof *gt);
  *gt_used = 0;
  return err;
}

/* Runs the whole conversion; 0 or an errno (EINTR when interrupted; EIO with
** j->zerr for a zlib failure). Frees everything it allocates. */
static int run_job(Job *j, int in, int outfd) {
  struct stat st;
  if (fstat(in, &st) != 0) { j->what = j->src; return errno; }
  if (!j->stream && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) { j->what = j->src; return EINVAL; }
  uint64_t size = j->stream ? j->stream_size : (uint64_t)st.st_size;
  if (!j->stream && S_ISBLK(st.st_mode)) {
    off_t end = lseek(in, 0, SEEK_END);
    if (end < 0) { j->what = j->src; return errno; }
    size = (uint64_t)end;
  }
  j->size = size;
  uint64_t capacity = (size + SECTOR - 1) / SECTOR;
  uint64_t ngrains = (size + GRAIN_BYTES - 1) / GRAIN_BYTES;
  uint64_t ngts = (ngrains + GTES_PER_GT - 1) / GTES_PER_GT;
  uint64_t gd_sectors = (ngts * 4 + SECTOR - 1) / SECTOR;
  capil_progress_total(j->prog, size);

  uint32_t cid;
  if (getrandom(&cid, sizeof cid, 0) != sizeof cid) cid = (uint32_t)getpid() ^ (uint32_t)st.st_ino;
  char desc[DESC_SECTORS * SECTOR];
  memset(desc, 0, sizeof desc);
  if (capil_vmdk_descriptor(desc, sizeof desc, cid, capacity, j->name, j->adapter, j->hwversion) < 0) {
    j->what = j->out;
    return ENAMETOOLONG;
  }

  int err = 0, started = 0;
  Pool p;
  memset(&p, 0, sizeof p);
  p.nslots = j->jobs * SLOTS_PER_JOB > MAX_SLOTS ? MAX_SLOTS : j->jobs * SLOTS_PER_JOB;
  p.level = j->level;
  p.out_cap = (GRAIN_MARKER_BYTES + compressBound(GRAIN_BYTES) + SECTOR - 1) / SECTOR * SECTOR;
  Out o = {outfd, malloc(OUTBUF_BYTES), 0, 0, j->sha};
  uint32_t *gd = calloc(ngts ? ngts : 1, sizeof *gd);
  uint32_t *gt = calloc(GTES_PER_GT, sizeof *gt);
  p.slots = calloc((size_t)p.nslots, sizeof *p.slots);
  pthread_t tids[MAX_JOBS];
  if (!o.buf || !gd || !gt || !p.slots) err = ENOMEM;
  for (int i = 0; !err && i < p.nslots; i++) {
    p.slots[i].in = malloc(GRAIN_BYTES);
    p.slots[i].out = malloc(p.out_cap);
    if (!p.slots[i].in || !p.slots[i].out) err = ENOMEM;
  }
  pthread_mutex_init(&p.mu, NULL);
  pthread_cond_init(&p.work, NULL);
  pthread_cond_init(&p.done, NULL);
  for (; !err && started < j->jobs; started++)
    if ((err = pthread_create(&tids[started], NULL, worker, &p)) != 0) break;
  if (err) j->what = j->out;

  /* header and descriptor, then zeros up to the first grain */
  unsigned char h[SECTOR];
  if (!err) {
    capil_vmdk_header(h, capacity, GD_AT_END);
    err = out_put(&o, h, sizeof h);
    if (!err) err = out_put(&o, desc, sizeof desc);
    static const unsigned char zeros[SECTOR];
    while (!err && o.offset < OVERHEAD_SECTORS * SECTOR) err = out_put(&o, zeros, sizeof zeros);
    if (err) j->what = j->out;
  }

  if (!j->stream) posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);
  uint64_t scan = 0, data_end = 0, write_seq = 0, cur_gt = 0;
  /* a stream has no extents to walk: every grain is read, the workers
  ** skip the all-zero ones */
  int seekable = !j->stream, gt_used = 0, eof = 0;
  while (!err) {
    if (capil_interrupted()) { err = EINTR; break; }
    /* fill free slots with the next data grains */
    while (!eof && p.next_fill - write_seq < (uint64_t)p.nslots) {
      uint64_t g = ngrains;
      if ((err = next_data_grain(in, scan, ngrains, size, &data_end, &seekable, &g)) != 0) {
        j->what = j->src;
        break;
      }
      if (g >= ngrains) { eof = 1; break; }
      Slot *s = &p.slots[p.next_fill % (uint64_t)p.nslots];
      s->grain = g;
      if ((err = read_grain(in, g, size, s->in, j->stream, &j->got)) != 0) { j->what = j->src; break; }
      scan = g + 1;
      pthread_mutex_lock(&p.mu);
      s->state = SLOT_FILLED;
      p.next_fill++;
      pthread_cond_signal(&p.work);
      pthread_mutex_unlock(&p.mu);
    }
    if (err) break;
    if (write_seq == p.next_fill) {
      if (eof) break;
      continue;
    }
    /* write the oldest grain in flight, in order */
    Slot *s = &p.slots[write_seq % (uint64_t)p.nslots];
    pthread_mutex_lock(&p.mu);
    while (s->state != SLOT_DONE) pthread_cond_wait(&p.done, &p.mu);
    pthread_mutex_unlock(&p.mu);
    if (s->zerr) { j->zerr = 1; err = EIO; j->what = j->out; break; }
    if (s->out_len) {
      uint64_t gti = s->grain / GTES_PER_GT;
      if (gti != cur_gt) {
        if ((err = flush_gt(&o, gt, &gt_used, gd, cur_gt)) != 0) { j->what = j->out; break; }
        cur_gt = gti;
      }
      if (o.offset / SECTOR > UINT32_MAX) { err = EFBIG; j->what = j->out; break; }
      gt[s->grain % GTES_PER_GT] = (uint32_t)(o.offset / SECTOR);
      gt_used = 1;
      if ((err = out_put(&o, s->out, s->out_len)) != 0) { j->what = j->out; break; }
      j->grains_written++;
    } else {
      j->grains_zero++;
    }
    s->state = SLOT_FREE;
    write_seq++;
    uint64_t done = (s->grain + 1) * GRAIN_BYTES;
    capil_progress_update(j->prog, done < size ? done : size);
  }

  /* stop the workers (they finish the grain in hand) */
  pthread_mutex_lock(&p.mu);
  p.stop = 1;
  pthread_cond_broadcast(&p.work);
  pthread_mutex_unlock(&p.mu);
  for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);

  /* the last GT, the GD, the footer and the end-of-stream marker */
  if (!err) {
    j->what = j->out;
    err = flush_gt(&o, gt, &gt_used, gd, cur_gt);
    if (!err) err = out_marker(&o, gd_sectors, MARKER_GD);
    uint64_t gd_offset = o.offset / SECTOR;
    for (uint64_t i = 0; !err && i < ngts; i++) {
      unsigned char le[4];
      put_u32(le, gd[i]);
      err = out_put(&o, le, 4);
    }
    static const unsigned char zeros[SECTOR];
    if (!err && o.offset % SECTOR) err = out_put(&o, zeros, SECTOR - o.offset % SECTOR);
    if (!err) err = out_marker(&o, 1, MARKER_FOOTER);
    if (!err) {
      capil_vmdk_header(h, capacity, gd_offset);
      err = out_put(&o, h, sizeof h);
    }
    if (!err) err = out_marker(&o, 0, MARKER_EOS);
    if (!err) err = out_flush(&o);
    if (!err && !j->into && fsync(outfd) != 0) err = errno;
    j->bytes = o.offset;
  }
  /* a source that shrank read as zeros, one that grew was cut: the disk
  ** written is not the source's (the fused OVA refuses it) */
  if (!err && j->into && !j->stream && (fstat(in, &st) != 0 || (S_ISREG(st.st_mode) && (uint64_t)st.st_size != size))) {
    j->what = j->src;
    err = ECHANGED;
  }

  for (int i = 0; p.slots && i < p.nslots; i++) { free(p.slots[i].in); free(p.slots[i].out); }
  free(p.slots);
  free(gd);
  free(gt);
  free(o.buf);
  pthread_mutex_destroy(&p.mu);
  pthread_cond_destroy(&p.work);
  pthread_cond_destroy(&p.done);
  return err;
}

/* ====================================================================== */
/* Lua                                                                    */
/* ====================================================================== */

static const char *const ADAPTERS[] = {"ide", "buslogic", "lsilogic", "legacyESX", NULL};

/* Pushes the result table of a finished job. */
static int push_result(lua_State *L, Job *j, const char *hex) {
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)j->bytes);
  lua_setfield(L, -2, "bytes");
  lua_pushinteger(L, (lua_Integer)j->size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)j->grains_written);
  lua_setfield(L, -2, "grains");
  lua_pushinteger(L, (lua_Integer)j->grains_zero);
  lua_setfield(L, -2, "zero_grains");
  if (hex) {
    lua_pushstring(L, hex);
    lua_setfield(L, -2, "sha256");
  }
  return 1;
}

/* The failure of a job, named after the file it concerns. */
static int job_fail(lua_State *L, Job *j, int err) {
  if (err == EINTR) return capil_fail(L, "EINTR", "vmdkw.write: %s: interrupted", j->out);
  if (err == EIO && j->zerr) return capil_fail(L, "ZLIB", "vmdkw.write: %s: deflate failed", j->out);
  if (err == EFBIG)
    return capil_fail(L, "EFBIG", "vmdkw.write: %s: over 2 TiB of compressed data (a sparse "
                      "extent addresses sectors with 32 bits)", j->out);
  if (err == EINVAL && j->what == j->src)
    return capil_fail(L, "EINVAL", "vmdkw.write: %s: not a regular file or block device", j->src);
  if (err == ESHORT)
    return capil_fail(L, "SHORT", "vmdkw.write: %s: the stream ended after %llu of its %llu bytes", j->src,
                      (unsigned long long)j->got, (unsigned long long)j->size);
  if (err == ECHANGED)
    return capil_fail(L, "CHANGED", "vmdkw.write: %s: the file changed size while it was read "
                      "(%llu bytes at the start)", j->src, (unsigned long long)j->size);
  return capil_fail_errno(L, err, "vmdkw.write: %s", j->what ? j->what : j->out);
}

/* The output's SHA-256 (when asked): started before the job, finished
** into hex after it; 0 or ENOMEM. sha_end frees the context either way. */
static int sha_begin(Job *j) {
  j->sha = EVP_MD_CTX_new();
  return j->sha && EVP_DigestInit_ex(j->sha, EVP_sha256(), NULL) == 1 ? 0 : ENOMEM;
}
static int sha_end(Job *j, int err, char hex[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!err && j->sha) {
    if (EVP_DigestFinal_ex(j->sha, md, &n) != 1) err = ENOMEM;
    for (unsigned int i = 0; i < n; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
  }
  EVP_MD_CTX_free(j->sha);
  j->sha = NULL;
  return err;
}

/* Writes into an open Lua file at its position: vmdkw.write's second form. */
static int write_into(lua_State *L, Job *j, luaL_Stream *s, int want_sha) {
  if (!s->closef) return luaL_error(L, "vmdkw.write: attempt to use a closed file");
  /* the stream's logical position (a read buffer can leave the fd ahead) */
  off_t start = ftello(s->f);
  int outfd = fileno(s->f);
  if (start < 0 || fflush(s->f) != 0 || lseek(outfd, start, SEEK_SET) < 0)
    return capil_fail_errno(L, errno, "vmdkw.write: %s", j->out);
  int in = j->stream ? j->stream_fd : open(j->src, O_RDONLY | O_CLOEXEC | O_NONBLOCK);  /* a FIFO: refused */
  if (in < 0) return capil_fail_errno(L, errno, "vmdkw.write: %s", j->src);
  j->into = 1;
  int err = want_sha ? sha_begin(j) : 0;
  if (!err) err = run_job(j, in, outfd);
  if (!j->stream) close(in);
  char hex[65];
  err = sha_end(j, err, hex);
  /* the stream's position follows the fd: after the VMDK (or where the
  ** failure left it: the caller discards the file then) */
  if (fseeko(s->f, (off_t)(start + (off_t)j->bytes), SEEK_SET) != 0 && !err) err = errno;
  if (err) return job_fail(L, j, err);
  return push_result(L, j, want_sha ? hex : NULL);
}

/*
** vmdkw.write(src, out, {jobs=, adapter_type=, hwversion=, level=, name=,
**   progress=, sha256=}) -> {bytes=, size=, grains=, zero_grains=, sha256=}
**   | nil, msg, code
** src: a raw disk (regular file or block device), or a stream {fd=, size=,
** name=}: a pipe read in order to `size` bytes (every grain read, the
** all-zero ones skipped; fewer bytes fail with code SHORT), fd left open,
** `name` what messages call it. out is a path, written as
** "<out>.part.<pid>" and renamed when complete; or an open file (io.open,
** writable): the VMDK goes at its current position, nothing is renamed or
** removed, the handle is left after the VMDK, `name` is required, and a
** source that changes size meanwhile fails (code CHANGED). sha256=true
** returns the SHA-256 of the bytes written (taken as they go out: no second
** read). jobs: compressing threads (default: online cores); level: zlib
** level (default 6, qemu's); name: the extent's file name in the
** descriptor (default: out's basename).
*/
static int l_write(lua_State *L) {
  static const char *const opts[] = {"jobs", "adapter_type", "hwversion", "level", "name",
                                     "progress", "sha256", NULL};
  Job j;
  memset(&j, 0, sizeof j);
  if (lua_istable(L, 1)) {
    /* a stream: {fd=, size=, name=} (the pipe of ssh's session:stream) */
    lua_settop(L, 3);
    lua_getfield(L, 1, "fd");
    lua_getfield(L, 1, "size");
    lua_getfield(L, 1, "name");
    if (!lua_isinteger(L, -3) || lua_tointeger(L, -3) < 0 || !lua_isinteger(L, -2) || lua_tointeger(L, -2) < 0)
      return luaL_error(L, "vmdkw.write: a stream source needs fd and size (integers of 0 or more)");
    j.stream = 1;
    j.stream_fd = (int)lua_tointeger(L, -3);
    j.stream_size = (uint64_t)lua_tointeger(L, -2);
    j.src = lua_isstring(L, -1) ? lua_tostring(L, -1) : "(stream)";
    j.src = lua_pushstring(L, j.src);
    lua_replace(L, 1);                  /* the name anchored in the table's place */
    lua_settop(L, 3);
  } else {
    j.src = luaL_checkstring(L, 1);
  }
  luaL_Stream *stream = luaL_testudata(L, 2, LUA_FILEHANDLE);
  j.out = stream ? "(open file)" : luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) capil_check_options(L, 3, "vmdkw.write", opts);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  lua_Integer jobs = capil_opt_integer(L, 3, "vmdkw.write", "jobs", cores > 0 ? cores : 1);
  if (jobs < 1 || jobs > MAX_JOBS) return luaL_error(L, "vmdkw.write: jobs must be 1 to %d", MAX_JOBS);
  j.jobs = (int)jobs;
  j.adapter = capil_opt_string(L, 3, "vmdkw.write", "adapter_type", "lsilogic", NULL);
  int known = 0;
  for (int i = 0; ADAPTERS[i]; i++) known |= strcmp(ADAPTERS[i], j.adapter) == 0;
  if (!known)
    return luaL_error(L, "vmdkw.write: unknown adapter_type '%s' (ide, buslogic, lsilogic, legacyESX)",
                      j.adapter);
  lua_Integer hw = capil_opt_integer(L, 3, "vmdkw.write", "hwversion", 15);
  if (hw < 1 || hw > 1000) return luaL_error(L, "vmdkw.write: hwversion must be 1 to 1000");
  j.hwversion = (int)hw;
  lua_Integer level = capil_opt_integer(L, 3, "vmdkw.write", "level", Z_DEFAULT_COMPRESSION);
  if (level < -1 || level > 9) return luaL_error(L, "vmdkw.write: level must be -1 to 9");
  j.level = (int)level;
  int want_sha = capil_opt_boolean(L, 3, "vmdkw.write", "sha256", 0);
  const char *base = strrchr(j.out, '/');
  j.name = capil_opt_string(L, 3, "vmdkw.write", "name", stream ? NULL : base ? base + 1 : j.out, NULL);
  if (!j.name) return luaL_error(L, "vmdkw.write: name is required when out is an open file");
  if (stream) j.out = j.name;   /* what messages name */
  if (strchr(j.name, '"') || strchr(j.name, '\n'))
    return luaL_error(L, "vmdkw.write: name must not contain quotes or newlines");
  capil_opt_field(L, 3, "progress");
  j.prog = capil_progress_opt(L, -1);
  if (stream) return write_into(L, &j, stream, want_sha);
  lua_pushfstring(L, "%s.part.%d", j.out, (int)getpid());
  j.tmp = lua_tostring(L, -1);   /* anchored on the stack until we return */

  /* from here to the results nothing raises: every resource is freed first */
  /* O_NONBLOCK: the open of a FIFO returns (to be refused by run_job's
  ** fstat) instead of waiting for a writer; reads of a regular file or a
  ** block device ignore it */
  int in = j.stream ? j.stream_fd : open(j.src, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (in < 0) return capil_fail_errno(L, errno, "vmdkw.write: %s", j.src);
  int outfd = open(j.tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (outfd < 0) {
    int e = errno;
    if (!j.stream) close(in);
    return capil_fail_errno(L, e, "vmdkw.write: %s", j.tmp);
  }
  int err = want_sha ? sha_begin(&j) : 0;
  if (!err) err = run_job(&j, in, outfd);
  if (!j.stream) close(in);
  char hex[65];
  err = sha_end(&j, err, hex);
  if (close(outfd) != 0 && !err) { err = errno; j.what = j.out; }
  if (!err && rename(j.tmp, j.out) != 0) { err = errno; j.what = j.out; }
  if (err) unlink(j.tmp);
  if (err) return job_fail(L, &j, err);
  return push_result(L, &j, want_sha ? hex : NULL);
}

/*
** vmdkw.bound(src) -> {size=, data_grains=, max_bytes=} | nil, msg, code
** (src an integer: a stream of that size, every grain counted as data)
** The most bytes vmdkw.write can write for src as it is now: every grain
** holding data (its data extents walked with SEEK_DATA/SEEK_HOLE, nothing
** read; every grain where the file system cannot tell) compressed to
** zlib's bound, plus the metadata. What capil.format.ova sizes the disk's
** tar header by before the VMDK exists.
*/
static int l_bound(lua_State *L) {
  uint64_t ngrains, data, size;
  if (lua_isinteger(L, 1)) {
    /* a stream's size: nothing to walk, any grain may hold data */
    lua_Integer n = lua_tointeger(L, 1);
    if (n < 0) return luaL_error(L, "vmdkw.bound: a size must be 0 or more");
    size = (uint64_t)n;
    ngrains = data = (size + GRAIN_BYTES - 1) / GRAIN_BYTES;
    goto computed;
  }
  const char *src = luaL_checkstring(L, 1);
  int fd = open(src, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return capil_fail_errno(L, errno, "vmdkw.bound: %s", src);
  struct stat st;
  int err = fstat(fd, &st) != 0 ? errno : 0;
  size = (uint64_t)st.st_size;
  if (!err && S_ISBLK(st.st_mode)) {
    off_t end = lseek(fd, 0, SEEK_END);
    if (end < 0) err = errno;
    else size = (uint64_t)end;
  } else if (!err && !S_ISREG(st.st_mode)) {
    close(fd);
    return capil_fail(L, "EINVAL", "vmdkw.bound: %s: not a regular file or block device", src);
  }
  ngrains = (size + GRAIN_BYTES - 1) / GRAIN_BYTES;
  data = 0;
  uint64_t g = 0, end_g = 0;
  int seekable = 1;
  while (!err && g < ngrains) {
    uint64_t next = ngrains, data_end = 0;
    if ((err = next_data_grain(fd, g, ngrains, size, &data_end, &seekable, &next)) != 0) break;
    if (next >= ngrains) break;
    if (!seekable) { data += ngrains - next; break; }
    end_g = (data_end + GRAIN_BYTES - 1) / GRAIN_BYTES;   /* past the extent's last grain */
    if (end_g <= next) end_g = next + 1;
    data += end_g - next;
    g = end_g;
  }
  close(fd);
  if (err) return capil_fail_errno(L, err, "vmdkw.bound: %s", src);
computed:;
  uint64_t ngts = (ngrains + GTES_PER_GT - 1) / GTES_PER_GT;
  uint64_t gts = data < ngts ? data : ngts;
  uint64_t grain_max = (GRAIN_MARKER_BYTES + compressBound(GRAIN_BYTES) + SECTOR - 1) / SECTOR * SECTOR;
  uint64_t max = (uint64_t)OVERHEAD_SECTORS * SECTOR + data * grain_max
               + gts * (SECTOR + GT_SECTORS * SECTOR)
               + SECTOR + (ngts * 4 + SECTOR - 1) / SECTOR * SECTOR + 3 * SECTOR;
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)data);
  lua_setfield(L, -2, "data_grains");
  lua_pushinteger(L, (lua_Integer)max);
  lua_setfield(L, -2, "max_bytes");
  return 1;
}

/* vmdkw.cylinders(sectors, adapter) -> integer: the geometry written */
static int l_cylinders(lua_State *L) {
  lua_Integer s = luaL_checkinteger(L, 1);
  const char *a = luaL_checkstring(L, 2);
  lua_pushinteger(L, (lua_Integer)capil_vmdk_cylinders((uint64_t)s, a));
  return 1;
}

static const luaL_Reg funcs[] = {
  {"write", l_write},
  {"bound", l_bound},
  {"cylinders", l_cylinders},
  {NULL, NULL}
};

int luaopen_capil_core_vmdkw(lua_State *L) {
  luaL_newlib(L, funcs);
  lua_pushinteger(L, GRAIN_BYTES);
  lua_setfield(L, -2, "GRAIN_BYTES");
  lua_pushinteger(L, MAX_JOBS);
  lua_setfield(L, -2, "MAX_JOBS");
  return 1;
}
