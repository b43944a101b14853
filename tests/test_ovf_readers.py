"""One reading of an OVF descriptor (issue 11): where OVF readers could take different values, it is refused.

Namespace-blind readers match attributes and elements by local name; VMware tools take
the guest from ``vmw:osType``, others from the OVF attribute. Each descriptor here is
valid but for the one ambiguity, and ``ovf.ambiguous`` must reject it; the same
descriptor without the ambiguity is accepted.
"""

from __future__ import annotations

import pytest
from importhooks_plugins.containers.ovf import OvfError, parse_descriptor

from importhooks import Verdict

from . import ova_images as o
from .helpers import audit, codes
from .test_ovf import NS1, descriptor, disk_el, file_el

NS2 = "http://schemas.dmtf.org/ovf/envelope/2"
VMW = 'xmlns:vmw="http://www.vmware.com/schema/ovf"'
OTHER = 'xmlns:x="http://example.com/other"'


def system(*sections: str) -> str:
    return f"<VirtualSystem ovf:id='v'>{''.join(sections)}</VirtualSystem>"


@pytest.mark.parametrize(("ambiguous", "plain"), [
    (descriptor(file_el(attrs=f'{OTHER} x:href="evil.vmdk"'), disk_el()), descriptor(file_el(), disk_el())),
    (descriptor(file_el(), disk_el(attrs=f'ovf:capacity="1" xmlns:o2="{NS2}" o2:fileRef="f2"')),
     descriptor(file_el(), disk_el())),
    (descriptor(file_el(), disk_el(), extra=f'<o2:DiskSection xmlns:o2="{NS2}"/>'), descriptor(file_el(), disk_el())),
    (descriptor(file_el() + '<File xmlns="" href="evil.vmdk" id="f9"/>', disk_el()),
     descriptor(file_el(), disk_el())),
    (descriptor(file_el(), disk_el(), extra=system(
        f'<OperatingSystemSection {VMW} ovf:osType="ubuntu64Guest" vmw:osType="windows9_64Guest"/>')),
     descriptor(file_el(), disk_el(), extra=system(
         f'<OperatingSystemSection {VMW} ovf:osType="ubuntu64Guest" vmw:osType="ubuntu64Guest"/>'))),
    (descriptor(file_el(), disk_el(), extra=system('<OperatingSystemSection ovf:osType="ubuntu64Guest"/>')
                + system('<OperatingSystemSection ovf:osType="windows9_64Guest"/>')),
     descriptor(file_el(), disk_el(), extra=system('<OperatingSystemSection ovf:osType="ubuntu64Guest"/>') * 2)),
], ids=["href in another namespace", "fileRef in the OVF 2 namespace", "DiskSection in the OVF 2 namespace",
        "File in no namespace", "ovf:osType and vmw:osType differ", "two sections, two guests"])
def test_an_ambiguous_descriptor_is_refused(ambiguous, plain):
    assert NS1 in ambiguous.decode()
    with pytest.raises(OvfError) as info:
        parse_descriptor(ambiguous)
    assert info.value.code.code == "ovf.ambiguous"
    assert parse_descriptor(plain).disks[0].file_ref == "f1"


def test_sections_that_agree_are_one_guest():
    data = descriptor(file_el(), disk_el(), extra=system('<OperatingSystemSection ovf:osType="rhel8_64Guest"/>')
                      + system('<OperatingSystemSection ovf:osType="RHEL8_64Guest"/>'))
    assert parse_descriptor(data).os_type == "rhel8_64Guest"


def test_an_ova_whose_descriptor_hides_a_windows_guest_is_rejected(settings, workdir, tmp_path):
    """ovf:osType says Ubuntu, vmw:osType Windows: the ova plugin refuses the package, whatever the disk holds."""
    disk = bytes(1 << 20)
    os_type = 'ovf:id="94" ovf:osType="ubuntu64Guest" vmw:osType="windows9_64Guest"'
    pack = o.package(disk, "raw", name="disk.raw", os_type=os_type)
    result = audit(settings.replace(container_formats=("bare", "ova")), pack.write(tmp_path / "x.ova"),
                   container_format="ova", disk_format="raw", os_type="linux")
    assert result.verdict is Verdict.REJECT and codes(result) == ["ovf.ambiguous"]
    assert "windows" not in result.findings[0].message.lower()
