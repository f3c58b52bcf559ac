# The recipes of run_train.sh / run_eval.sh for their `--help`: every case label of the
# recipe list with its comment (on the label's line, else after the recipe's `;;`).
/^  [a-z][a-z0-9|-]*\)/ {
  n = $1; sub(/\).*/, "", n); c = ""; open = 1
  if (match($0, /\)[ \t]+#[ \t]*/)) c = substr($0, RSTART + RLENGTH)
}
open && /;;/ {
  if (c == "" && match($0, /;;[ \t]*#[ \t]*/)) c = substr($0, RSTART + RLENGTH)
  printf "  %-22s %s\n", n, c; open = 0
}
