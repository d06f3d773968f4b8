# spec/support/zsh_complete.zsh — completes one command line through zsh's
# real completion system, as a user pressing Tab would, and prints the
# candidates the completion functions offered, one per line.
#   zsh -f spec/support/zsh_complete.zsh COMPLETIONS_DIR "capil run ubu"
# An interactive zsh runs in a pseudo-terminal (zsh/zpty) with compinit over
# COMPLETIONS_DIR; a compadd wrapper collects every candidate, and a
# post-completion hook prints them between two markers.
zmodload zsh/zpty || exit 2
zdot=$(mktemp -d) || exit 2
trap 'rm -rf $zdot' EXIT
cat > $zdot/.zshrc <<'RC'
PS1=''
fpath=($CAPIL_COMPDIR $fpath)
autoload -Uz compinit; compinit -u -D
_capture_list=()
compadd() { local -a _a; builtin compadd -O _a "$@"; _capture_list+=("${_a[@]}"); builtin compadd "$@" }
_capture_dump() { print -r -- "$(printf '\x3c\x3cCANDS')"; print -rl -- "${(@)_capture_list}"; print -r -- "$(printf 'CANDS\x3e\x3e')"; _capture_list=() }
_capture_setup() { comppostfuncs=( _capture_dump ) }
compprefuncs=( _capture_setup )
bindkey '^I' complete-word
RC
export ZDOTDIR=$zdot CAPIL_COMPDIR=$1
zpty z zsh -i
zpty -n -w z "$2"$'\t'
out=""
integer i=0
while (( i++ < 200 )); do
  zpty -r -t z line && out+=$line
  [[ $out == *"CANDS>>"* ]] && break
  sleep 0.1
done
zpty -d z
[[ $out == *"CANDS>>"* ]] || { print -u2 "zsh_complete: no completion within 20 s"; exit 1; }
print -r -- "${${out#*<<CANDS}%%CANDS>>*}" | tr -d '\r' | sed '/^$/d'
