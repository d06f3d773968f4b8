std = "lua54"
max_line_length = 140
files["spec/"] = { std = "+busted" }
exclude_files = { "build*/**", "spec/fixtures/bad-recipes/**" }
max_comment_line_length = false
-- helpers the sandbox gives role and check files (lua/capil/build/roles.lua)
files["recipes/roles/"] = { read_globals = { "var", "flag", "words", "quote", "base64_decode", "download", "escape_pattern" } }
files["recipes/checks/"] = { read_globals = { "var", "flag", "words", "quote", "base64_decode", "download", "escape_pattern" } }
