-- luacheck settings for Pulse's Lua scripts. `make lint` checks every script as Redis
-- runs it: with its includes resolved (python -m pulse_core.lua_scripts DIR).
-- Scripts run inside Redis (Lua 5.1); these are the globals Redis gives them.
std = "lua51"
read_globals = { "redis", "KEYS", "ARGV", "cjson", "cmsgpack", "bit", "struct", "unpack" }
max_line_length = 120
-- What an include defines for the scripts that use it; a script may use only part.
ignore = {
  "211/FINAL_STATES", "211/WAITING_STATES", "211/window_acquire", "211/account_used", "211/account_retain",
  "211/account_release_in",
  "211/dispatch_spec", "211/dispatch_pop_spec", "211/DISPATCH_PRIORITY_SPAN", "211/handover_of",
  "211/dispatch_straight", "211/dispatch",
}
