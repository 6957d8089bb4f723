package chtest

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// schema is one shape of Cloud Hypervisor's OpenAPI document
// (vmm/src/api/openapi/cloud-hypervisor.yaml, v40 and later), restated by
// hand: enough of JSON Schema to hold a request body to its required
// properties, types, integer formats and minimums, and enums. An object
// refuses properties the document does not define.
type schema struct {
	kind     string // object, string, integer, boolean, array, any
	props    map[string]*schema
	required []string
	enum     []string
	lo, hi   int64 // integer bounds from format and minimum
	items    *schema
}

func obj(required []string, props map[string]*schema) *schema {
	return &schema{kind: "object", props: props, required: required}
}
func str() *schema                { return &schema{kind: "string"} }
func boolean() *schema            { return &schema{kind: "boolean"} }
func enum(vals ...string) *schema { return &schema{kind: "string", enum: vals} }
func arr(items *schema) *schema   { return &schema{kind: "array", items: items} }

// integer is an integer of OpenAPI format f ("" is int64, as serde reads
// CH's usize and u64 fields on x86-64).
func integer(f string) *schema {
	s := &schema{kind: "integer", lo: math.MinInt64, hi: math.MaxInt64}
	switch f {
	case "int8":
		s.lo, s.hi = math.MinInt8, math.MaxInt8
	case "uint8":
		s.lo, s.hi = 0, math.MaxUint8
	case "int16":
		s.lo, s.hi = math.MinInt16, math.MaxInt16
	case "uint16":
		s.lo, s.hi = 0, math.MaxUint16
	case "int32":
		s.lo, s.hi = math.MinInt32, math.MaxInt32
	case "uint32":
		s.lo, s.hi = 0, math.MaxUint32
	}
	return s
}

func atLeast(s *schema, lo int64) *schema { s.lo = lo; return s }

// check validates v (decoded with UseNumber) at path against s. Its
// message reads like serde's, which CH's error bodies carry.
func (s *schema) check(path string, v any) error {
	switch s.kind {
	case "any":
		return nil
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: invalid type: %s, expected struct", path, typeName(v))
		}
		for _, r := range s.required {
			if _, ok := m[r]; !ok {
				return fmt.Errorf("%s: missing field `%s`", path, r)
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ps, ok := s.props[k]
			if !ok {
				known := make([]string, 0, len(s.props))
				for p := range s.props {
					known = append(known, "`"+p+"`")
				}
				sort.Strings(known)
				return fmt.Errorf("%s: unknown field `%s`, expected one of %s", path, k, strings.Join(known, ", "))
			}
			if err := ps.check(path+"."+k, m[k]); err != nil {
				return err
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: invalid type: %s, expected a sequence", path, typeName(v))
		}
		for i, e := range a {
			if err := s.items.check(fmt.Sprintf("%s[%d]", path, i), e); err != nil {
				return err
			}
		}
	case "string":
		t, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: invalid type: %s, expected a string", path, typeName(v))
		}
		if len(s.enum) > 0 && !slices.Contains(s.enum, t) {
			return fmt.Errorf("%s: unknown variant `%s`, expected one of `%s`", path, t, strings.Join(s.enum, "`, `"))
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: invalid type: %s, expected a boolean", path, typeName(v))
		}
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: invalid type: %s, expected an integer", path, typeName(v))
		}
		i, err := n.Int64()
		if err != nil {
			return fmt.Errorf("%s: invalid type: floating point `%s`, expected an integer", path, n)
		}
		if i < s.lo || i > s.hi {
			return fmt.Errorf("%s: invalid value: integer `%d`, expected an integer in %d..=%d", path, i, s.lo, s.hi)
		}
	default:
		return fmt.Errorf("%s: schema kind %q unknown to the test double", path, s.kind)
	}
	return nil
}

func typeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("boolean `%v`", v)
	case json.Number:
		return fmt.Sprintf("number `%s`", v)
	case string:
		return fmt.Sprintf("string %q", v)
	case []any:
		return "sequence"
	case map[string]any:
		return "map"
	}
	return fmt.Sprintf("%T", v)
}

// The document's schemas that request bodies of the endpoints the double
// serves can hold.
var (
	tokenBucket = obj([]string{"size", "refill_time"}, map[string]*schema{
		"size": atLeast(integer("int64"), 0), "one_time_burst": atLeast(integer("int64"), 0), "refill_time": atLeast(integer("int64"), 0),
	})
	rateLimiterConfig = obj(nil, map[string]*schema{"bandwidth": tokenBucket, "ops": tokenBucket})
	virtQueueAffinity = obj([]string{"queue_index", "host_cpus"}, map[string]*schema{
		"queue_index": integer(""), "host_cpus": arr(integer("")),
	})
	consoleMode = enum("Off", "Pty", "Tty", "File", "Socket", "Null")
	pciIDs      = map[string]*schema{"pci_segment": integer("int16"), "pci_device_id": integer("uint8"), "id": str()}

	payloadConfig = obj(nil, map[string]*schema{
		"firmware": str(), "kernel": str(), "cmdline": str(), "initramfs": str(), "igvm": str(), "host_data": str(),
	})
	cpusConfig = obj([]string{"boot_vcpus", "max_vcpus"}, map[string]*schema{
		"boot_vcpus": atLeast(integer(""), 1),
		"max_vcpus":  atLeast(integer(""), 1),
		"topology": obj(nil, map[string]*schema{
			"threads_per_core": integer(""), "cores_per_die": integer(""), "dies_per_package": integer(""), "packages": integer(""),
		}),
		"kvm_hyperv":    boolean(),
		"max_phys_bits": integer(""),
		"nested":        boolean(),
		"affinity": arr(obj([]string{"vcpu", "host_cpus"}, map[string]*schema{
			"vcpu": integer(""), "host_cpus": arr(integer("")),
		})),
		"features":        obj(nil, map[string]*schema{"amx": boolean()}),
		"core_scheduling": enum("Vm", "Vcpu", "Off"),
	})
	memoryZoneConfig = obj([]string{"id", "size"}, map[string]*schema{
		"id": str(), "size": integer("int64"), "file": str(), "mergeable": boolean(), "shared": boolean(),
		"hugepages": boolean(), "hugepage_size": integer("int64"), "host_numa_node": integer("int32"),
		"hotplug_size": integer("int64"), "hotplugged_size": integer("int64"), "prefault": boolean(), "reserve": boolean(),
	})
	memoryConfig = obj([]string{"size"}, map[string]*schema{
		"size": integer("int64"), "hotplug_size": integer("int64"), "hotplugged_size": integer("int64"),
		"mergeable": boolean(), "hotplug_method": str(), "shared": boolean(), "hugepages": boolean(),
		"hugepage_size": integer("int64"), "prefault": boolean(), "reserve": boolean(), "thp": boolean(),
		"zones": arr(memoryZoneConfig),
	})
	diskConfig = obj(nil, with(pciIDs, map[string]*schema{
		"path": str(), "readonly": boolean(), "direct": boolean(), "iommu": boolean(), "num_queues": integer(""),
		"queue_size": integer(""), "vhost_user": boolean(), "vhost_socket": str(), "rate_limiter_config": rateLimiterConfig,
		"serial": str(), "rate_limit_group": str(), "queue_affinity": arr(virtQueueAffinity),
		"backing_files": boolean(), "sparse": boolean(),
		"image_type":       enum("FlatVmdk", "FixedVhd", "Qcow2", "Raw", "Vhdx", "Unknown"),
		"lock_granularity": enum("ByteRange", "Full"),
	}))
	netConfig = obj(nil, with(pciIDs, map[string]*schema{
		"tap": str(), "ip": str(), "mask": str(), "mac": str(), "host_mac": str(), "mtu": integer(""),
		"iommu": boolean(), "num_queues": integer(""), "queue_size": integer(""), "vhost_user": boolean(),
		"vhost_socket": str(), "vhost_mode": str(), "rate_limiter_config": rateLimiterConfig,
		"offload_tso": boolean(), "offload_ufo": boolean(), "offload_csum": boolean(),
	}))
	rngConfig     = obj([]string{"src"}, with(pciIDs, map[string]*schema{"iommu": boolean(), "src": str()}))
	balloonConfig = obj([]string{"size"}, with(pciIDs, map[string]*schema{
		"iommu": boolean(), "size": integer("int64"), "deflate_on_oom": boolean(), "free_page_reporting": boolean(),
	}))
	fsConfig = obj([]string{"num_queues", "queue_size", "socket", "tag"}, with(pciIDs, map[string]*schema{
		"tag": str(), "socket": str(), "num_queues": integer(""), "queue_size": integer(""),
	}))
	genericVhostUserConfig = obj([]string{"queue_sizes", "socket", "device_type"}, with(pciIDs, map[string]*schema{
		"socket": str(), "queue_sizes": arr(integer("uint16")), "device_type": integer("uint32"),
	}))
	pmemConfig = obj([]string{"file"}, with(pciIDs, map[string]*schema{
		"file": str(), "size": integer("int64"), "iommu": boolean(), "discard_writes": boolean(),
	}))
	consoleConfig = obj([]string{"mode"}, with(pciIDs, map[string]*schema{
		"file": str(), "socket": str(), "mode": consoleMode, "iommu": boolean(),
	}))
	serialConfig       = obj([]string{"mode"}, map[string]*schema{"file": str(), "socket": str(), "mode": consoleMode})
	debugConsoleConfig = obj([]string{"mode"}, map[string]*schema{"file": str(), "mode": consoleMode, "iobase": integer("")})
	deviceConfig       = obj(nil, with(pciIDs, map[string]*schema{
		"path": str(), "iommu": boolean(), "x_nv_gpudirect_clique": integer("int8"), "x_exclude_mmap_bars": arr(integer("int64")),
	}))
	userDeviceConfig = obj([]string{"socket"}, with(pciIDs, map[string]*schema{"socket": str()}))
	vdpaConfig       = obj([]string{"path", "num_queues"}, with(pciIDs, map[string]*schema{
		"path": str(), "num_queues": integer(""), "iommu": boolean(),
	}))
	vsockConfig = obj([]string{"cid", "socket"}, with(pciIDs, map[string]*schema{
		"cid": atLeast(integer("int64"), 3), "socket": str(), "iommu": boolean(),
	}))
	numaConfig = obj([]string{"guest_numa_id"}, map[string]*schema{
		"guest_numa_id": integer("int32"), "cpus": arr(integer("int32")),
		"distances": arr(obj([]string{"destination", "distance"}, map[string]*schema{
			"destination": integer("int32"), "distance": integer("int32"),
		})),
		"memory_zones": arr(str()), "pci_segments": arr(integer("int32")), "device_id": str(),
	})
	rtcConfig        = obj(nil, with(pciIDs, map[string]*schema{"iommu": boolean()}))
	pciSegmentConfig = obj([]string{"pci_segment"}, map[string]*schema{
		"pci_segment": integer("int16"), "mmio32_aperture_weight": integer("int32"), "mmio64_aperture_weight": integer("int32"),
	})
	platformConfig = obj(nil, map[string]*schema{
		"num_pci_segments": integer("int16"), "iommu_segments": arr(integer("int16")), "iommu_address_width_bits": integer("uint8"),
		"system_serial_number": str(), "serial_number": str(), "system_uuid": str(), "uuid": str(), "oem_strings": arr(str()),
		"system_manufacturer": str(), "system_product_name": str(), "system_version": str(), "system_family": str(),
		"system_sku_number": str(), "chassis_asset_tag": str(), "tdx": boolean(), "sev_snp": boolean(),
		"iommufd": boolean(), "vfio_p2p_dma": boolean(),
	})

	vmConfig = obj([]string{"payload"}, map[string]*schema{
		"cpus": cpusConfig, "memory": memoryConfig, "payload": payloadConfig,
		"rate_limit_groups": arr(obj([]string{"id", "rate_limiter_config"}, map[string]*schema{
			"id": str(), "rate_limiter_config": rateLimiterConfig,
		})),
		"disks": arr(diskConfig), "net": arr(netConfig), "rng": rngConfig, "balloon": balloonConfig,
		"fs": arr(fsConfig), "generic_vhost_user": arr(genericVhostUserConfig), "pmem": arr(pmemConfig),
		"serial": serialConfig, "console": consoleConfig, "debug_console": debugConsoleConfig,
		"devices": arr(deviceConfig), "user_devices": arr(userDeviceConfig), "vdpa": arr(vdpaConfig),
		"vsock": vsockConfig, "numa": arr(numaConfig), "iommu": boolean(), "watchdog": boolean(),
		"rtc": rtcConfig, "pvpanic": boolean(), "pci_segments": arr(pciSegmentConfig), "platform": platformConfig,
		"tpm":             obj([]string{"socket"}, map[string]*schema{"socket": str()}),
		"landlock_enable": boolean(),
		"landlock_rules":  arr(obj([]string{"path", "access"}, map[string]*schema{"path": str(), "access": str()})),
	})
)

// with merges common properties into props.
func with(common, props map[string]*schema) map[string]*schema {
	for k, v := range common {
		props[k] = v
	}
	return props
}
