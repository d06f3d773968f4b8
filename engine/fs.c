/*
** fs.c — capil.core.fs: the file operations builds need, each returning the
** error triple with the path in the message: mkdir -p, temp dirs, atomic
** writes (temp file + fsync + rename), stat, list, remove tree, copy.
*/
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

#include "capil.h"

/* ====================================================================== */
/* Helpers                                                                */
/* ====================================================================== */

/* mkdir -p in C; returns 0 or an errno value. */
static int mkdir_p(const char *path, mode_t mode) {
  char buf[PATH_MAX];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf) return n ? ENAMETOOLONG : ENOENT;
  memcpy(buf, path, n + 1);
  for (char *c = buf + 1; *c; c++) {
    if (*c != '/') continue;
    *c = '\0';
    if (mkdir(buf, mode) != 0 && errno != EEXIST) return errno;
    *c = '/';
  }
  if (mkdir(buf, mode) != 0) {
    if (errno != EEXIST) return errno;
    struct stat st;
    if (stat(buf, &st) != 0) return errno;
    if (!S_ISDIR(st.st_mode)) return ENOTDIR;
  }
  return 0;
}

/* rm -rf relative to an open directory; returns 0 or an errno value and
** leaves the failing path in `failed`. Symlinks are removed, not followed. */
static int remove_tree_at(int at, const char *name, char *failed, size_t fsize,
                          const char *shown) {
  struct stat st;
  if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
    return errno == ENOENT ? 0 : (snprintf(failed, fsize, "%s", shown), errno);
  if (!S_ISDIR(st.st_mode)) {
    if (unlinkat(at, name, 0) != 0 && errno != ENOENT) {
      snprintf(failed, fsize, "%s", shown);
      return errno;
    }
    return 0;
  }
  int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) { snprintf(failed, fsize, "%s", shown); return errno; }
  DIR *d = fdopendir(fd);
  if (!d) { int e = errno; close(fd); snprintf(failed, fsize, "%s", shown); return e; }
  struct dirent *ent;
  int err = 0;
  while (!err && (ent = readdir(d))) {
    if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
    char child[PATH_MAX];
    snprintf(child, sizeof child, "%s/%s", shown, ent->d_name);
    err = remove_tree_at(dirfd(d), ent->d_name, failed, fsize, child);
  }
  closedir(d);
  if (err) return err;
  if (unlinkat(at, name, AT_REMOVEDIR) != 0 && errno != ENOENT) {
    snprintf(failed, fsize, "%s", shown);
    return errno;
  }
  return 0;
}

/* Copies all of in to out; returns 0 or errno. */
static int copy_fd(int in, int out) {
  for (;;) {
    ssize_t n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
    if (n == 0) return 0;
    if (n > 0) continue;
    if (errno == EINTR) continue;
    if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
      return errno;
    break;
  }
  char *buf = malloc(1 << 20);
  if (!buf) return ENOMEM;
  int err = 0;
  for (;;) {
    ssize_t n = read(in, buf, 1 << 20);
    if (n < 0) { if (errno == EINTR) continue; err = errno; break; }
    if (n == 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(out, buf + off, (size_t)(n - off));
      if (w < 0) { if (errno == EINTR) continue; err = errno; goto done; }
      off += w;
    }
  }
done:
  free(buf);
  return err;
}

/* Opens a unique temp file next to `path` ("<path>.tmp-XXXXXX"). */
static int open_sibling_temp(lua_State *L, const char *path, mode_t mode) {
  const char *tmpl = lua_pushfstring(L, "%s.tmp-XXXXXX", path);
  char *t = (char *)tmpl; /* mkstemp writes into Lua's copy: fresh string */
  int fd = mkostemp(t, O_CLOEXEC);
  if (fd >= 0) fchmod(fd, mode);
  return fd;
}

/* ====================================================================== */
/* Functions                                                              */
/* ====================================================================== */

/* fs.mkdir(path [, mode]) -> true | nil, msg, code  (mkdir -p) */
static int l_mkdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  mode_t mode = (mode_t)luaL_optinteger(L, 2, 0755);
  int err = mkdir_p(path, mode);
  if (err) return capil_fail_errno(L, err, "fs.mkdir: %s", path);
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.tempdir([parent [, prefix]]) -> path | nil, msg, code */
static int l_tempdir(lua_State *L) {
  const char *parent = luaL_optstring(L, 1, NULL);
  const char *prefix = luaL_optstring(L, 2, "capil");
  if (!parent) {
    parent = getenv("TMPDIR");
    if (!parent || !*parent) parent = "/tmp";
  }
  int err = mkdir_p(parent, 0755);
  if (err) return capil_fail_errno(L, err, "fs.tempdir: %s", parent);
  const char *t = lua_pushfstring(L, "%s/%s-XXXXXX", parent, prefix);
  if (!mkdtemp((char *)t)) return capil_fail_errno(L, errno, "fs.tempdir: %s", parent);
  return 1;
}

/*
** fs.write(path, data [, {mode=, sync=true}]) -> true | nil, msg, code
** Atomic: the data goes to a temp file beside path, is fsynced, then renamed
** over path, so readers see the old content or the new one, never a part.
*/
static int l_write(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  static const char *const opts[] = {"mode", "sync", NULL};
  if (!lua_isnoneornil(L, 3)) capil_check_options(L, 3, "fs.write", opts);
  mode_t mode = (mode_t)capil_opt_integer(L, 3, "fs.write", "mode", 0644);
  int sync = capil_opt_boolean(L, 3, "fs.write", "sync", 1);
  int fd = open_sibling_temp(L, path, mode);
  if (fd < 0) return capil_fail_errno(L, errno, "fs.write: %s", path);
  const char *tmp = lua_tostring(L, -1);
  int err = 0;
  for (size_t off = 0; off < len && !err;) {
    ssize_t w = write(fd, data + off, len - off);
    if (w < 0) { if (errno != EINTR) err = errno; continue; }
    off += (size_t)w;
  }
  if (!err && sync && fsync(fd) != 0) err = errno;
  if (close(fd) != 0 && !err) err = errno;
  if (!err && rename(tmp, path) != 0) err = errno;
  if (err) {
    unlink(tmp);
    return capil_fail_errno(L, err, "fs.write: %s", path);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* A file descriptor owned by a userdata, so a Lua error (out of memory
** while growing a buffer) cannot leak it: __gc closes it. */
#define FD_MT "capil.sys.fs.Fd"

static int fd_gc(lua_State *L) {
  int *fd = luaL_checkudata(L, 1, FD_MT);
  if (*fd >= 0) { close(*fd); *fd = -1; }
  return 0;
}

static int *push_fd(lua_State *L) {
  int *fd = lua_newuserdatauv(L, sizeof *fd, 0);
  *fd = -1;
  if (luaL_newmetatable(L, FD_MT)) {
    lua_pushcfunction(L, fd_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return fd;
}

/* What a file that is not a regular one is, for messages. */
static const char *kind_phrase(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a plain file";
}

/*
** fs.read(path [, {max=bytes}]) -> data | nil, msg, code
** With max, the file must be a regular file (code "EFTYPE": a FIFO or a
** device would block or never end) of at most max bytes (code "EFBIG").
** The open does not block on a FIFO: the type is checked on the open fd.
*/
static int l_read(lua_State *L) {
  static const char *const opts[] = {"max", NULL};
  const char *path = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2)) capil_check_options(L, 2, "fs.read", opts);
  lua_Integer max = capil_opt_integer(L, 2, "fs.read", "max", -1);
  if (max < -1) return luaL_error(L, "fs.read: max must not be negative");
  int *fd = push_fd(L);
  *fd = open(path, O_RDONLY | O_CLOEXEC | (max >= 0 ? O_NONBLOCK | O_NOCTTY : 0));
  if (*fd < 0) return capil_fail_errno(L, errno, "fs.read: %s", path);
  if (max >= 0) {
    struct stat st;
    if (fstat(*fd, &st) != 0) return capil_fail_errno(L, errno, "fs.read: %s", path);
    if (!S_ISREG(st.st_mode))
      return capil_fail(L, "EFTYPE", "fs.read: %s: is %s, not a regular file", path, kind_phrase(st.st_mode));
    if (st.st_size > max)
      return capil_fail(L, "EFBIG", "fs.read: %s: larger than %lld bytes", path, (long long)max);
    fcntl(*fd, F_SETFL, fcntl(*fd, F_GETFL) & ~O_NONBLOCK);
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t total = 0;
  for (;;) {
    char *p = luaL_prepbuffsize(&b, 65536);
    ssize_t n = read(*fd, p, 65536);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(*fd);
      *fd = -1;
      return capil_fail_errno(L, e, "fs.read: %s", path);
    }
    if (n == 0) break;
    total += (size_t)n;
    /* the file grew after the fstat */
    if (max >= 0 && total > (size_t)max) {
      close(*fd);
      *fd = -1;
      return capil_fail(L, "EFBIG", "fs.read: %s: larger than %lld bytes", path, (long long)max);
    }
    luaL_addsize(&b, (size_t)n);
  }
  luaL_pushresult(&b);
  close(*fd);
  *fd = -1;
  return 1;
}

static const char *type_name(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "directory";
  if (S_ISLNK(m)) return "link";
  if (S_ISSOCK(m)) return "socket";
  if (S_ISFIFO(m)) return "fifo";
  if (S_ISCHR(m)) return "char";
  if (S_ISBLK(m)) return "block";
  return "other";
}

/* fs.stat(path [, {follow=true}]) -> {type, size, mode, mtime, allocated, dev} | nil, msg, code */
static int l_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  static const char *const opts[] = {"follow", NULL};
  if (!lua_isnoneornil(L, 2)) capil_check_options(L, 2, "fs.stat", opts);
  int follow = capil_opt_boolean(L, 2, "fs.stat", "follow", 1);
  struct stat st;
  if ((follow ? stat(path, &st) : lstat(path, &st)) != 0)
    return capil_fail_errno(L, errno, "fs.stat: %s", path);
  lua_createtable(L, 0, 6);
  lua_pushstring(L, type_name(st.st_mode)); lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)st.st_size); lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777)); lua_setfield(L, -2, "mode");
  lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec + (lua_Number)st.st_mtim.tv_nsec / 1e9);
  lua_setfield(L, -2, "mtime");
  lua_pushinteger(L, (lua_Integer)st.st_blocks * 512); lua_setfield(L, -2, "allocated");
  lua_pushinteger(L, (lua_Integer)st.st_dev); lua_setfield(L, -2, "dev");
  return 1;
}

/* fs.space(path) -> {free=, total=} bytes of the file system holding path
 * (free: what an unprivileged user may still write) | nil, msg, code */
static int l_space(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct statvfs sv;
  if (statvfs(path, &sv) != 0) return capil_fail_errno(L, errno, "fs.space: %s", path);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)sv.f_bavail * (lua_Integer)sv.f_frsize); lua_setfield(L, -2, "free");
  lua_pushinteger(L, (lua_Integer)sv.f_blocks * (lua_Integer)sv.f_frsize); lua_setfield(L, -2, "total");
  return 1;
}

/* fs.exists(path) -> boolean (no error triple: absence is the answer) */
static int l_exists(lua_State *L) {
  struct stat st;
  lua_pushboolean(L, lstat(luaL_checkstring(L, 1), &st) == 0);
  return 1;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* fs.list(dir) -> sorted array of names (no . and ..) | nil, msg, code */
static int l_list(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (!d) return capil_fail_errno(L, errno, "fs.list: %s", path);
  lua_newtable(L);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    lua_pushstring(L, e->d_name);
    lua_rawseti(L, -2, ++n);
  }
  closedir(d);
  /* sort through a userdata-held vector so nothing leaks if this raises */
  const char **v = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -2, i + 1);
    v[i] = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  qsort(v, (size_t)n, sizeof *v, cmp_names);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, v[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* fs.remove(path [, {recursive=false}]) -> true | nil, msg, code; absent is fine */
static int l_remove(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  static const char *const opts[] = {"recursive", NULL};
  if (!lua_isnoneornil(L, 2)) capil_check_options(L, 2, "fs.remove", opts);
  int recursive = capil_opt_boolean(L, 2, "fs.remove", "recursive", 0);
  size_t n = strlen(path);
  if (n == 0 || strcmp(path, "/") == 0)
    return luaL_error(L, "fs.remove: refusing to remove '%s'", path);
  if (recursive) {
    char failed[PATH_MAX] = "";
    int err = remove_tree_at(AT_FDCWD, path, failed, sizeof failed, path);
    if (err) return capil_fail_errno(L, err, "fs.remove: %s", failed);
  } else if (remove(path) != 0 && errno != ENOENT) {
    return capil_fail_errno(L, errno, "fs.remove: %s", path);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.rename(from, to) -> true | nil, msg, code */
static int l_rename(lua_State *L) {
  const char *from = luaL_checkstring(L, 1);
  const char *to = luaL_checkstring(L, 2);
  if (rename(from, to) != 0)
    return capil_fail_errno(L, errno, "fs.rename: %s -> %s", from, to);
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.copy(from, to [, {mode=}]) -> true | nil, msg, code
** Atomic at the destination (temp + rename); keeps the source's mode. */
static int l_copy(lua_State *L) {
  const char *from = luaL_checkstring(L, 1);
  const char *to = luaL_checkstring(L, 2);
  static const char *const opts[] = {"mode", NULL};
  if (!lua_isnoneornil(L, 3)) capil_check_options(L, 3, "fs.copy", opts);
  int in = open(from, O_RDONLY | O_CLOEXEC);
  if (in < 0) return capil_fail_errno(L, errno, "fs.copy: %s", from);
  struct stat st;
  if (fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
    int e = S_ISDIR(st.st_mode) ? EISDIR : errno;
    close(in);
    return capil_fail_errno(L, e, "fs.copy: %s", from);
  }
  mode_t mode = (mode_t)capil_opt_integer(L, 3, "fs.copy", "mode", st.st_mode & 07777);
  int out = open_sibling_temp(L, to, mode);
  if (out < 0) { int e = errno; close(in); return capil_fail_errno(L, e, "fs.copy: %s", to); }
  const char *tmp = lua_tostring(L, -1);
  int err = copy_fd(in, out);
  close(in);
  if (close(out) != 0 && !err) err = errno;
  if (!err && rename(tmp, to) != 0) err = errno;
  if (err) {
    unlink(tmp);
    return capil_fail_errno(L, err, "fs.copy: %s -> %s", from, to);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* fs.realpath(path) -> absolute path | nil, msg, code */
static int l_realpath(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char buf[PATH_MAX];
  if (!realpath(path, buf)) return capil_fail_errno(L, errno, "fs.realpath: %s", path);
  lua_pushstring(L, buf);
  return 1;
}

/* fs.cwd() -> current directory */
static int l_cwd(lua_State *L) {
  char buf[PATH_MAX];
  if (!getcwd(buf, sizeof buf)) return capil_fail_errno(L, errno, "fs.cwd");
  lua_pushstring(L, buf);
  return 1;
}

/* fs.truncate(path, size) -> true | nil, msg, code (creates sparse files) */
static int l_truncate(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer size = luaL_checkinteger(L, 2);
  luaL_argcheck(L, size >= 0, 2, "must not be negative");
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return capil_fail_errno(L, errno, "fs.truncate: %s", path);
  int r = ftruncate(fd, (off_t)size);
  int e = errno;
  close(fd);
  if (r != 0) return capil_fail_errno(L, e, "fs.truncate: %s", path);
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg funcs[] = {
  {"mkdir", l_mkdir},
  {"tempdir", l_tempdir},
  {"write", l_write},
  {"read", l_read},
  {"stat", l_stat},
  {"exists", l_exists},
  {"space", l_space},
  {"list", l_list},
  {"remove", l_remove},
  {"rename", l_rename},
  {"copy", l_copy},
  {"realpath", l_realpath},
  {"cwd", l_cwd},
  {"truncate", l_truncate},
  {NULL, NULL}
};

int luaopen_capil_core_fs(lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
