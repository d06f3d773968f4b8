/* hash.c — capil.core.hash (being written) */
#include "capil.h"
int luaopen_capil_core_hash(lua_State *L) {
  lua_newtable(L);
  return 1;
}
