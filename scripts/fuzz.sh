#!/usr/bin/env bash
# Runs every Fuzz target of the module for FUZZTIME (default 10s) each.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
status=0
while IFS=: read -r file name; do
	pkg=./$(dirname "$file")
	echo "fuzz $pkg $name ($fuzztime)"
	# Go's fuzz coordinator can end a clean run with "context deadline
	# exceeded" when fuzztime runs out while a worker is mid-input; it
	# then wrote no failing input. Such a run is tried once more; a real
	# failure always leaves its input in testdata/fuzz/.
	ok=1
	for try in 1 2; do
		out=$(mktemp)
		if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -fuzzminimizetime 2s "$pkg" 2>&1 | tee "$out"; then
			ok=1
		else
			ok=0
		fi
		flake=0
		if [ "$ok" = 0 ] && grep -q 'context deadline exceeded' "$out" &&
			[ -z "$(git ls-files --others --exclude-standard -- "$(dirname "$file")/testdata/fuzz/$name")" ]; then
			flake=1
		fi
		rm -f "$out"
		[ "$flake" = 1 ] && [ "$try" = 1 ] && { echo "fuzz: $name ended on the fuzzer's own deadline with no failing input; once more"; continue; }
		break
	done
	if [ "$ok" = 0 ]; then
		status=1
		# go test writes the failing input into the package's
		# testdata/fuzz/: move it under out/ so that the tree stays
		# clean; copy it back to reproduce (go test -run "$name/<file>").
		dest=out/fuzz/$(dirname "$file")/$name
		while IFS= read -r -d '' f; do
			mkdir -p "$dest"
			mv "$f" "$dest/"
			echo "fuzz: failing input moved to $dest/$(basename "$f") (copy it into $(dirname "$f")/ to reproduce)"
			rmdir -p --ignore-fail-on-non-empty "$(dirname "$f")"
		done < <(git ls-files -z --others --exclude-standard -- "$(dirname "$file")/testdata/fuzz/$name")
	fi
done < <(git ls-files '*_test.go' | xargs grep -o '^func Fuzz[A-Za-z0-9_]*' | sed 's/^\(.*\):func \(.*\)$/\1:\2/' | sort)
exit $status
