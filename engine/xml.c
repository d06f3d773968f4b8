/* xml.c — capil.core.xml (being written) */
#include "capil.h"
int luaopen_capil_core_xml(lua_State *L) {
  lua_newtable(L);
  return 1;
}
