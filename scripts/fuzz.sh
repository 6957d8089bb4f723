#!/usr/bin/env bash
# Runs every Fuzz target of the module for FUZZTIME (default 10s) each.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
status=0
while IFS=: read -r file name; do
	pkg=./$(dirname "$file")
	echo "fuzz $pkg $name ($fuzztime)"
	if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -fuzzminimizetime 2s "$pkg"; then
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
