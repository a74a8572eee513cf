#!/usr/bin/env bash
# scripts/legs.sh: runs test legs (make targets) one after another, times
# each, and ends with a table of every leg's result, wall time and CPU time,
# then one plain line "N passed, N failed" counting legs, which is the last
# line printed.
# The exit status is 0 only when every leg passed.
#
#   scripts/legs.sh LEG...      e.g. scripts/legs.sh test-release test-python
#
# Environment:
#   MAKE       the make to call (the Makefile passes its own $(MAKE))
#   FAIL_FAST  1: stop at the first failed leg; the rest show "not run"
#
# By default every leg runs even after one failed.  The legs are independent
# (each has its own build tree), a sanitizer failure and a valgrind failure
# are usually different bugs, and the whole matrix takes long enough that a
# developer or CI wants every failure from one run, not one per run.  Ctrl-C
# stops everything at once and still prints the table.
#
# A leg may report a note (for example that it skipped itself because PyPI is
# unreachable) by writing one line to the file named by $LEG_NOTE; a note
# that starts with "skipped" marks the leg as skipped instead of passed.
set -uo pipefail
make=${MAKE:-make}
((${#} > 0)) || { echo "usage: $0 LEG..." >&2; exit 2; }

names=() results=() times=() cpus=() notes=()
passed=0 failed=0 skipped=0 interrupted=0
note_file=$(mktemp) times_file=$(mktemp)
trap 'rm -f "$note_file" "$times_file"' EXIT
trap 'interrupted=1' INT

# now: wall time in nanoseconds.
now() { date +%s%N; }

# cpu_ms: sets $cpu to the user + system CPU time, in ms, of every finished
# child so far (`times` must run in this shell, not in a subshell).  On a
# shared machine a leg's wall time depends on the load; its CPU time hardly
# does.
cpu_ms() {
  local user sys
  times >"$times_file"
  read -r user sys < <(tail -n 1 "$times_file")
  cpu=$(( $(to_ms "$user") + $(to_ms "$sys") ))
}

# to_ms 1m2.345s: 62345.
to_ms() {
  local m=${1%%m*} s=${1#*m}
  s=${s%s}
  echo $(( 10#$m * 60000 + 10#${s%.*} * 1000 + 10#${s#*.} ))
}

for leg in "$@"; do
  if ((interrupted)) || { [[ ${FAIL_FAST:-0} == 1 ]] && ((failed > 0)); }; then
    names+=("$leg") results+=("not run") times+=("") cpus+=("") notes+=("")
    continue
  fi
  echo "== leg $leg ($((${#names[@]} + 1))/$#) =="
  : >"$note_file"
  start=$(now)
  cpu_ms; cpu_start=$cpu
  LEG_NOTE=$note_file $make --no-print-directory "$leg"
  rc=$?
  elapsed=$(( ($(now) - start) / 1000000 ))   # ms
  cpu_ms; cpu=$((cpu - cpu_start))
  note=$(head -n 1 "$note_file")
  if ((interrupted)); then
    result="interrupted"; failed=$((failed + 1))
  elif ((rc != 0)); then
    result="FAILED"; failed=$((failed + 1)); note="exit $rc${note:+; $note}"
  elif [[ $note == skipped* ]]; then
    result="skipped"; skipped=$((skipped + 1))
  else
    result="passed"; passed=$((passed + 1))
  fi
  names+=("$leg") results+=("$result") times+=("$elapsed") cpus+=("$cpu") notes+=("$note")
done

# fmt_ms MS: "12.3 s", or "4m 05.6s (245.6 s)" from a minute on.
fmt_ms() {
  local ms=$1 s=$(($1 / 1000)) tenth=$(($1 % 1000 / 100))
  if ((s >= 60)); then
    printf '%dm %02d.%ds (%d.%d s)' $((s / 60)) $((s % 60)) "$tenth" "$s" "$tenth"
  else
    printf '%d.%d s' "$s" "$tenth"
  fi
}

total=0 total_cpu=0
echo
echo "== legs: result, wall time and CPU time (user + system) of each =="
printf '  %-18s %-12s %-24s %-12s %s\n' "leg" "result" "time" "cpu" "note"
for i in "${!names[@]}"; do
  t=${times[$i]} c=${cpus[$i]}
  [[ -n $t ]] && total=$((total + t)) total_cpu=$((total_cpu + c))
  row=$(printf '  %-18s %-12s %-24s %-12s %s' "${names[$i]}" "${results[$i]}" \
    "$([[ -n $t ]] && fmt_ms "$t")" "$([[ -n $c ]] && fmt_ms "$c")" "${notes[$i]}")
  echo "${row%"${row##*[! ]}"}"   # without trailing blanks
done
printf '  %-18s %-12s %-24s %s\n' "total" "" "$(fmt_ms "$total")" "$(fmt_ms "$total_cpu")"
not_run=$(($# - passed - failed - skipped))
line="$passed passed, $failed failed"
((skipped > 0)) && line+=", $skipped skipped"
((not_run > 0)) && line+=", $not_run not run"
echo "$line"
((failed == 0 && not_run == 0 && !interrupted))
