//! Reads the parts of a libvirt domain XML that virt-persona needs, and writes
//! the tags metadata element, and removes tuning elements from a definition. Tolerant: unknown elements are ignored, a missing
//! value is `None`, nothing panics.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use crate::hypervisor::{DiskInfo, InterfaceInfo, TAGS_NAMESPACE};
use crate::model::tuning::Knob;

/// What the domain XML says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DomainXml {
    pub id: Option<u32>,
    pub name: String,
    pub uuid: String,
    pub vcpus: u32,
    /// `<iothreads>`: how many iothreads the domain has.
    pub iothreads: u32,
    /// `<iothreadids>`: their ids, where the definition names them.
    pub iothread_id_list: Vec<u32>,
    pub memory_kib: u64,
    pub current_memory_kib: u64,
    pub disks: Vec<DiskInfo>,
    pub interfaces: Vec<InterfaceInfo>,
    pub tags: Vec<String>,
}

impl DomainXml {
    /// The iothreads' ids: as `<iothreadids>` names them, else 1 to `<iothreads>`.
    pub fn iothread_ids(&self) -> Vec<u32> {
        if self.iothread_id_list.is_empty() {
            (1..=self.iothreads).collect()
        } else {
            self.iothread_id_list.clone()
        }
    }
}

fn attr(e: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

fn to_kib(value: &str, unit: Option<&str>) -> u64 {
    let v: u64 = value.trim().parse().unwrap_or(0);
    let mul: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => return v / 1024,
        "KB" => return v * 1000 / 1024,
        "MB" => return v * 1_000_000 / 1024,
        "GB" => return v * 1_000_000_000 / 1024,
        "M" | "MiB" => 1024,
        "G" | "GiB" => 1 << 20,
        "T" | "TiB" => 1 << 30,
        _ => 1,
    };
    v.saturating_mul(mul)
}

/// Parses a domain XML document.
pub fn parse_domain(xml: &str) -> Result<DomainXml, String> {
    let mut reader = NsReader::from_str(xml);
    let mut out = DomainXml::default();
    let mut stack: Vec<String> = Vec::new();
    let mut text_target: Option<(String, Option<String>)> = None; // element, unit attr
    let mut in_tag = false;
    let mut disk: Option<DiskInfo> = None;
    let mut iface: Option<InterfaceInfo> = None;
    loop {
        let (ns, ev) = reader
            .read_resolved_event()
            .map_err(|e| format!("domain XML: {e}"))?;
        let ours =
            matches!(&ns, ResolveResult::Bound(n) if n.as_ref() == TAGS_NAMESPACE.as_bytes());
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let path: Vec<&str> = stack.iter().map(String::as_str).collect();
                match (path.as_slice(), local.as_str()) {
                    ([], "domain") => out.id = attr(e, b"id").and_then(|v| v.parse().ok()),
                    (["domain", "iothreadids"], "iothread") => {
                        if let Some(id) = attr(e, b"id").and_then(|v| v.trim().parse().ok()) {
                            out.iothread_id_list.push(id);
                        }
                    }
                    (["domain"], "name" | "uuid" | "iothreads") => {
                        text_target = Some((local.clone(), None))
                    }
                    (["domain"], "vcpu") => {
                        if let Some(c) = attr(e, b"current").and_then(|v| v.parse().ok()) {
                            out.vcpus = c;
                        } else {
                            text_target = Some((local.clone(), None));
                        }
                    }
                    (["domain"], "memory" | "currentMemory") => {
                        text_target = Some((local.clone(), attr(e, b"unit")))
                    }
                    (["domain", "devices"], "disk") => {
                        disk = Some(DiskInfo {
                            target: String::new(),
                            source: None,
                        });
                        if empty {
                            disk = None;
                        }
                    }
                    (["domain", "devices", "disk"], "target") => {
                        if let (Some(d), Some(dev)) = (disk.as_mut(), attr(e, b"dev")) {
                            d.target = dev;
                        }
                    }
                    (["domain", "devices", "disk"], "source") => {
                        if let Some(d) = disk.as_mut() {
                            d.source = attr(e, b"file")
                                .or_else(|| attr(e, b"dev"))
                                .or_else(|| attr(e, b"name"));
                        }
                    }
                    (["domain", "devices"], "interface") => {
                        iface = if empty {
                            None
                        } else {
                            Some(InterfaceInfo {
                                target: None,
                                mac: None,
                            })
                        };
                    }
                    (["domain", "devices", "interface"], "target") => {
                        if let Some(i) = iface.as_mut() {
                            i.target = attr(e, b"dev");
                        }
                    }
                    (["domain", "devices", "interface"], "mac") => {
                        if let Some(i) = iface.as_mut() {
                            i.mac = attr(e, b"address");
                        }
                    }
                    (["domain", "metadata", "tags"], "tag") if ours && !empty => in_tag = true,
                    _ => {}
                }
                if !empty {
                    // keep the tags element only when it is in our namespace
                    let keep = if local == "tags" && path == ["domain", "metadata"] && !ours {
                        "foreign-tags".to_string()
                    } else {
                        local
                    };
                    stack.push(keep);
                }
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| format!("domain XML: {e}"))?
                    .into_owned();
                if in_tag {
                    let tag = text.trim();
                    if !tag.is_empty() {
                        out.tags.push(tag.to_string());
                    }
                } else if let Some((el, unit)) = &text_target {
                    match el.as_str() {
                        "name" => out.name = text.trim().to_string(),
                        "uuid" => out.uuid = text.trim().to_string(),
                        "vcpu" => out.vcpus = text.trim().parse().unwrap_or(0),
                        "iothreads" => out.iothreads = text.trim().parse().unwrap_or(0),
                        "memory" => out.memory_kib = to_kib(&text, unit.as_deref()),
                        "currentMemory" => out.current_memory_kib = to_kib(&text, unit.as_deref()),
                        _ => {}
                    }
                }
            }
            Event::End(_) => {
                let closed = stack.pop().unwrap_or_default();
                text_target = None;
                in_tag = false;
                if stack.len() == 2 && stack[1] == "devices" {
                    if closed == "disk" {
                        out.disks
                            .extend(disk.take().filter(|d| !d.target.is_empty()));
                    } else if closed == "interface" {
                        out.interfaces.extend(iface.take());
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if out.name.is_empty() {
        return Err("domain XML has no <name>".into());
    }
    if out.current_memory_kib == 0 {
        out.current_memory_kib = out.memory_kib;
    }
    Ok(out)
}

/// The metadata element that stores tags (SPEC §6), without namespace
/// declaration: libvirt adds it from the key and URI passed with it.
pub fn tags_element(tags: &[String]) -> String {
    let mut s = String::from("<tags>");
    for t in tags {
        s.push_str("<tag>");
        s.push_str(&quick_xml::escape::escape(t.as_str()));
        s.push_str("</tag>");
    }
    s.push_str("</tags>");
    s
}

/// Where a knob lives in a domain definition, for knobs that are an element
/// of their own there: `[parent, element]` below `<domain>` and, for a
/// per-device row, the attribute and value that single out one element of a
/// list (`<vcpupin vcpu='1'>`). `None` for knobs whose absence has a value
/// libvirt's calls write (a device throttle of 0, a bandwidth of 0).
type ElementOf = ([&'static str; 2], Option<(&'static str, String)>);

fn element_of(knob: &Knob) -> Option<ElementOf> {
    if let (Some(row), Some(device)) = (knob.device_row(), knob.device()) {
        let [parent, element, attr] = row.xml?;
        return Some(([parent, element], Some((attr, device))));
    }
    knob.row().and_then(|r| r.xml).map(|x| (x, None))
}

/// The knob whose element `e` is, inside the elements `stack`, if any of `knobs`.
fn knob_of<'k>(stack: &[Vec<u8>], e: &BytesStart<'_>, knobs: &'k [Knob]) -> Option<&'k Knob> {
    let [top, parent] = stack else {
        return None;
    };
    if top.as_slice() != b"domain" {
        return None;
    }
    let local = e.local_name();
    knobs.iter().find(|k| {
        element_of(k).is_some_and(|([p, name], index)| {
            parent.as_slice() == p.as_bytes()
                && local.as_ref() == name.as_bytes()
                && index.is_none_or(|(key, v)| {
                    attr(e, key.as_bytes()).is_some_and(|a| same_device(a.trim(), &v))
                })
        })
    })
}

/// A device as the definition names it and as a knob does: numbers compare
/// as numbers (`vcpu='01'` is vCPU 1).
fn same_device(a: &str, b: &str) -> bool {
    match (a.parse::<u32>(), b.parse::<u32>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Which of `knobs` the definition leaves unset: no element of its own for
/// them. Knobs whose absence is a value ([`Knob::absent`]) are never listed:
/// their value read through libvirt says whether they are set.
pub fn unset_knobs(xml: &str, knobs: &[Knob]) -> Result<Vec<Knob>, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut unset: Vec<Knob> = knobs
        .iter()
        .filter(|k| element_of(k).is_some())
        .cloned()
        .collect();
    loop {
        match reader
            .read_event()
            .map_err(|e| format!("domain XML: {e}"))?
        {
            Event::Start(e) => {
                if let Some(k) = knob_of(&stack, &e, knobs) {
                    unset.retain(|u| u != k);
                }
                stack.push(e.local_name().as_ref().to_vec());
            }
            Event::Empty(e) => {
                if let Some(k) = knob_of(&stack, &e, knobs) {
                    unset.retain(|u| u != k);
                }
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Eof => return Ok(unset),
            _ => {}
        }
    }
}

/// The definition without the elements of `knobs` (the way a definition that
/// never set them reads). Everything else is written back as it was.
pub fn remove_knobs(xml: &str, knobs: &[Knob]) -> Result<String, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(xml.len()));
    let mut stack: Vec<Vec<u8>> = Vec::new();
    // depth of the element being dropped, while inside it
    let mut skipping: Option<usize> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("domain XML: {e}"))?;
        match &ev {
            Event::Eof => break,
            Event::Start(e) => {
                if skipping.is_none() && knob_of(&stack, e, knobs).is_some() {
                    skipping = Some(stack.len());
                }
                stack.push(e.local_name().as_ref().to_vec());
                if skipping.is_some() {
                    continue;
                }
            }
            Event::Empty(e) => {
                if skipping.is_some() || knob_of(&stack, e, knobs).is_some() {
                    continue;
                }
            }
            Event::End(_) => {
                stack.pop();
                if let Some(depth) = skipping {
                    if stack.len() == depth {
                        skipping = None;
                    }
                    continue;
                }
            }
            _ => {
                if skipping.is_some() {
                    continue;
                }
            }
        }
        writer
            .write_event(ev)
            .map_err(|e| format!("domain XML: {e}"))?;
    }
    String::from_utf8(writer.into_inner()).map_err(|e| format!("domain XML: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm' id='7'>
  <name>web-1</name>
  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  <metadata>
    <vp:tags xmlns:vp="https://virt-persona.dev/xmlns/tags/1"><vp:tag>web</vp:tag><vp:tag>prod</vp:tag></vp:tags>
    <other:tags xmlns:other="urn:x"><other:tag>nope</other:tag></other:tags>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <devices>
    <disk type='file' device='disk'><source file='/var/lib/a.img'/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/></disk>
    <interface type='bridge'><mac address='52:54:00:00:00:01'/><target dev='vnet3'/></interface>
    <interface type='bridge'><mac address='52:54:00:00:00:02'/></interface>
  </devices>
</domain>"#;

    #[test]
    fn parses_what_we_need() {
        let d = parse_domain(XML).unwrap();
        assert_eq!(d.id, Some(7));
        assert_eq!(d.name, "web-1");
        assert_eq!(d.uuid, "c7a5fdbd-edaf-9455-926a-d65c16db1809");
        assert_eq!(d.vcpus, 2);
        assert_eq!(d.memory_kib, 1_048_576);
        assert_eq!(d.current_memory_kib, 524_288);
        assert_eq!(d.disks.len(), 2);
        assert_eq!(d.disks[1].source.as_deref(), Some("/dev/sdb"));
        assert_eq!(d.interfaces[0].target.as_deref(), Some("vnet3"));
        assert_eq!(d.interfaces[1].target, None);
        assert_eq!(d.interfaces[1].mac.as_deref(), Some("52:54:00:00:00:02"));
        assert_eq!(d.tags, vec!["web", "prod"]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // mismatched end tag
        assert!(parse_domain("<domain><name>x</domain>").is_err());
        assert!(
            parse_domain("<domain><name>x</name><vcpu>lots</vcpu></domain>")
                .is_ok_and(|d| d.vcpus == 0)
        );
        assert!(parse_domain("").is_err());
        assert!(parse_domain("<domain/>").is_err());
    }

    #[test]
    fn tags_are_escaped() {
        assert_eq!(
            tags_element(&["a<b".into()]),
            "<tags><tag>a&lt;b</tag></tags>"
        );
    }

    const DEF: &str = r#"<domain type='kvm'>
  <name>d</name>
  <memtune>
    <soft_limit unit='KiB'>524288</soft_limit>
  </memtune>
  <cputune>
    <shares>2048</shares>
    <vcpupin vcpu='0' cpuset='1'/>
    <vcpupin vcpu='1' cpuset='0'/>
    <period>100000</period>
  </cputune>
  <devices><graphics type='vnc' passwd='s&amp;cret'/></devices>
</domain>"#;

    #[test]
    fn unset_knobs_are_the_ones_without_an_element() {
        let knobs = [
            Knob::CpuShares,
            Knob::VcpuQuota,
            Knob::VcpuPin { vcpu: 1 },
            Knob::VcpuPin { vcpu: 2 },
            Knob::MemorySoftLimit,
            Knob::MemoryHardLimit,
            Knob::BlkioWeight,
        ];
        let unset = unset_knobs(DEF, &knobs).unwrap();
        assert_eq!(
            unset,
            vec![
                Knob::VcpuQuota,
                Knob::VcpuPin { vcpu: 2 },
                Knob::MemoryHardLimit,
                Knob::BlkioWeight
            ]
        );
    }

    #[test]
    fn removing_knobs_drops_only_their_elements() {
        let out = remove_knobs(
            DEF,
            &[
                Knob::CpuShares,
                Knob::VcpuPin { vcpu: 1 },
                Knob::MemorySoftLimit,
                Knob::BlkioWeight,
            ],
        )
        .unwrap();
        assert!(!out.contains("<shares>"), "{out}");
        assert!(!out.contains("soft_limit"), "{out}");
        assert!(!out.contains("vcpu='1'"), "{out}");
        assert!(out.contains("<vcpupin vcpu='0' cpuset='1'/>"), "{out}");
        assert!(out.contains("<period>100000</period>"), "{out}");
        // the rest, escapes included, is written back as it was
        assert!(out.contains("passwd='s&amp;cret'"), "{out}");
        let again = unset_knobs(&out, &[Knob::CpuShares, Knob::VcpuPin { vcpu: 0 }]).unwrap();
        assert_eq!(again, vec![Knob::CpuShares]);
        // nothing to remove: the same text
        assert_eq!(remove_knobs(DEF, &[Knob::VcpuQuota]).unwrap(), DEF);
    }

    #[test]
    fn editing_garbage_is_an_error() {
        assert!(remove_knobs("<domain><cputune></domain>", &[Knob::CpuShares]).is_err());
    }
}
