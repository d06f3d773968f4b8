/* archive.c — capil.core.archive (being written: OVA tar on libarchive) */
#include "capil.h"
int luaopen_capil_core_archive(lua_State *L) {
  lua_newtable(L);
  return 1;
}
