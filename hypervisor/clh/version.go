package clh

import (
	"fmt"
	"regexp"
	"strconv"
)

// MinVersion is the oldest Cloud Hypervisor release the driver was written
// for (its OpenAPI document and error bodies).
const MinVersion = 40

var versionRE = regexp.MustCompile(`\bv?(\d+)\.(\d+)`)

// ParseVersion reads the major and minor release from CH's version text:
// `cloud-hypervisor --version` prints "cloud-hypervisor v40.0.0", vmm.ping
// answers "v40.0" (either may carry a git suffix).
func ParseVersion(s string) (major, minor int, err error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, fmt.Errorf("no version number in %q", clip([]byte(s)))
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	return major, minor, nil
}

// CheckVersion fails for a release older than MinVersion.
func CheckVersion(s string) error {
	major, minor, err := ParseVersion(s)
	if err != nil {
		return err
	}
	if major < MinVersion {
		return fmt.Errorf("cloud-hypervisor v%d.%d is older than v%d, the oldest release vmpod drives", major, minor, MinVersion)
	}
	return nil
}
