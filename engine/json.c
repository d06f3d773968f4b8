/* json.c — capil.core.json (being written) */
#include "capil.h"
int luaopen_capil_core_json(lua_State *L) {
  lua_newtable(L);
  return 1;
}
