--- capil.util.template — `{{ name }}` substitution for installer files, role
--- templates and boot commands. Packer's names are accepted as aliases
--- (`{{ .HTTPIP }}` = `{{ http_ip }}`, `{{ .HTTPPort }}`, `{{ .Name }}`,
--- `{{ user `x` }}` = `{{ x }}`). An unknown name is an error naming it and
--- the template, never an empty string.
local M = {}

local ALIASES = {
  [".HTTPIP"] = "http_ip", [".HTTPIp"] = "http_ip", [".HTTPPort"] = "http_port",
  [".Name"] = "name",
}

--- Renders `text` with `vars`; returns the text or nil and an error.
---@param text string
---@param vars table<string, any>
---@param what? string the template's name for messages
---@return string|nil, string?
function M.render(text, vars, what)
  local err
  local out = text:gsub("{{%s*(.-)%s*}}", function(expr)
    local name = expr:match("^user%s+`([%w_]+)`$") or expr:match("^([%.%w_]+)$")
    if not name then
      err = err or ("invalid template expression '{{ %s }}'"):format(expr)
      return ""
    end
    local key = ALIASES[name] or name
    local v = vars[key]
    if v == nil then
      err = err or ("unknown template variable '{{ %s }}'"):format(expr)
      return ""
    end
    if type(v) == "boolean" then return v and "true" or "false" end
    return tostring(v)
  end)
  if err then
    return nil, what and (what .. ": " .. err) or err
  end
  return out
end

return M
