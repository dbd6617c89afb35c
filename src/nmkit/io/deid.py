"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile, and options.

Why: images leave the hospital for research only without the patient's identity, but a study must stay
usable afterwards: the same patient keeps the same pseudonym across studies and runs, UIDs are remapped
*consistently across all files* so that SEG/RTSTRUCT references still point to their images, and (by
default) dates are shifted by a per-patient offset so intervals such as injection-to-scan survive.

What is done to every dataset (``Deidentifier.deidentify``):

* the actions of ``BASIC_PROFILE`` (PS3.15 Table E.1-1, written here as data: D dummy, Z empty,
  X remove, K keep, C clean, U remap UID) are applied, recursing into every sequence;
* every UI-VR value that is not a DICOM-defined (``1.2.840.10008.*``) or SOP-class/transfer-syntax UID is
  remapped to ``2.25.<int>`` from a salted hash (deterministic: same salt -> same UIDs in every run);
* private tags are removed (``keep_safe_private`` keeps a short list of known-safe ones), curves (50xx)
  and overlay data/comments (60xx) are removed, as the profile requires;
* PatientName/PatientID become a salted pseudonym (or the one already in the mapping file);
* dates are shifted by a per-patient whole-day offset (``date_mode="shift"``, times kept) or emptied
  (``date_mode="remove"``);
* with the Clean Descriptors option, SeriesDescription/StudyDescription are kept with the patient's name
  parts and ID replaced (a light cleaning: free text is not parsed further);
* PatientIdentityRemoved = YES, DeidentificationMethod ("nmkit profile <name>: PS3.15 basic+<option codes>") and
  DeidentificationMethodCodeSequence (PS3.16 CID 7050 codes) are set.

Two named profiles (``profile_options``):

* ``basic``: the PS3.15 Basic Profile alone; dates emptied, weight/size/age and descriptions removed.
  PET SUV is no longer computable (unless the pixels are already SUV).
* ``research`` (the CLI default): basic + Retain Patient Characteristics (113108: weight, size, sex, age),
  Retain Longitudinal Temporal Information with Modified Dates (113107: every DA/DT shifted by one per-patient
  whole-day offset derived from the salt; times of day unchanged, so injection-to-scan intervals, decay
  corrections and intervals between time points are exact and SUV is unchanged), Clean Descriptors (113105:
  series/study descriptions kept, cleaned), Retain Safe Private (113111: only the known-safe private
  attributes of ``SAFE_PRIVATE``, e.g. the Philips SUV scale factor that CNTS PET needs).
  The radiopharmaceutical sequence (tracer, dose, half-life, start time) is kept by both profiles; its start
  DateTime is shifted like every other date.

Pixel data are never changed. Burned-in annotation cannot be fixed here: files that declare it (or are of
modalities that usually carry it) are flagged in the run report.

The mapping (original -> pseudonym, UID map, date offsets) is written to a CSV *outside* the output folder.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pydicom
from pydicom.dataset import Dataset
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from ..errors import DicomReadError, InputError
from .dicom_warnings import DicomWarnings
from .dicom_write import instance_path, set_file_meta

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# PS3.15 Table E.1-1, Basic Profile column. Composite actions of the standard are resolved to the
# strictest one that keeps files valid: X/Z -> Z, X/D -> X, Z/D -> Z, X/Z/D -> Z, X/Z/U* -> U
# (referencing sequences are kept with their UIDs remapped). Keywords are pydicom's dictionary keywords.
# Repeating groups (curves 50xx, Overlay Data 60xx,3000 and Overlay Comments 60xx,4000: X) are handled in code.
# ---------------------------------------------------------------------------------------------------
_TABLE_TEXT = """
AccessionNumber Z
AcquisitionComments X
AcquisitionContextSequence X
AcquisitionDate Z
AcquisitionDateTime Z
AcquisitionDeviceProcessingDescription X
AcquisitionProtocolDescription X
AcquisitionTime Z
ActualHumanPerformersSequence X
AdditionalPatientHistory X
AddressTrial X
AdmissionID X
AdmittingDate X
AdmittingDiagnosesCodeSequence X
AdmittingDiagnosesDescription X
AdmittingTime X
AffectedSOPInstanceUID X
Allergies X
Arbitrary X
AuthorObserverSequence X
BranchOfService X
CassetteID X
CommentsOnThePerformedProcedureStep X
ConcatenationUID U
ConfidentialityConstraintOnPatientDataDescription X
ConsultingPhysicianName X
ContentCreatorIdentificationCodeSequence X
ContentCreatorName Z
ContentDate Z
ContentSequence X
ContentTime Z
ContextGroupExtensionCreatorUID U
ContrastBolusAgent Z
ContributionDescription X
CountryOfResidence X
CreatorVersionUID U
CurrentPatientLocation X
CurveDate X
CurveTime X
CustodialOrganizationSequence X
DataSetTrailingPadding X
Date X
DateTime X
DerivationDescription X
DetectorID X
DeviceDescription X
DeviceSerialNumber Z
DeviceUID U
DigitalSignatureUID X
DigitalSignaturesSequence X
DimensionOrganizationUID U
DischargeDiagnosisDescription X
DistributionAddress X
DistributionName X
DoseReferenceUID U
EndAcquisitionDateTime X
EthnicGroup X
ExpectedCompletionDateTime X
FailedSOPInstanceUIDList U
FiducialUID U
FillerOrderNumberImagingServiceRequest Z
FrameComments X
FrameOfReferenceUID U
GantryID X
GeneratorID X
GraphicAnnotationSequence X
HumanPerformerName X
HumanPerformerOrganization X
IconImageSequence X
IdentifyingComments X
ImageComments X
ImagePresentationComments X
ImagingServiceRequestComments X
Impressions X
InstanceCoercionDateTime X
InstanceCreationDate X
InstanceCreationTime Z
InstanceCreatorUID U
InstitutionAddress X
InstitutionCodeSequence X
InstitutionName X
InstitutionalDepartmentName X
InsurancePlanIdentification X
IntendedRecipientsOfResultsIdentificationSequence X
InterpretationApproverSequence X
InterpretationAuthor X
InterpretationDiagnosisDescription X
InterpretationIDIssuer X
InterpretationRecorder X
InterpretationText X
InterpretationTranscriber X
IrradiationEventUID U
IssuerOfAdmissionID X
IssuerOfPatientID X
IssuerOfServiceEpisodeID X
LargePaletteColorLookupTableUID U
LastMenstrualDate X
MAC X
MediaStorageSOPInstanceUID U
MedicalAlerts X
MedicalRecordLocator X
MilitaryRank X
ModifiedAttributesSequence X
ModifiedImageDescription X
ModifyingDeviceID X
ModifyingDeviceManufacturer X
NameOfPhysiciansReadingStudy X
NamesOfIntendedRecipientsOfResults X
Occupation X
OperatorIdentificationSequence X
OperatorsName X
OrderCallbackPhoneNumber X
OrderEnteredBy X
OrderEntererLocation X
OriginalAttributesSequence X
OtherPatientIDs X
OtherPatientIDsSequence X
OtherPatientNames X
ParticipantSequence X
PatientAddress X
PatientAge X
PatientBirthDate Z
PatientBirthName X
PatientBirthTime X
PatientComments X
PatientID Z
PatientInstitutionResidence X
PatientInsurancePlanCodeSequence X
PatientMotherBirthName X
PatientName Z
PatientPrimaryLanguageCodeSequence X
PatientPrimaryLanguageModifierCodeSequence X
PatientReligiousPreference X
PatientSex Z
PatientSexNeutered Z
PatientSize X
PatientState X
PatientTelephoneNumbers X
PatientTransportArrangements X
PatientWeight X
PerformedLocation X
PerformedProcedureStepDescription X
PerformedProcedureStepEndDate X
PerformedProcedureStepEndDateTime X
PerformedProcedureStepEndTime X
PerformedProcedureStepID X
PerformedProcedureStepStartDate X
PerformedProcedureStepStartDateTime X
PerformedProcedureStepStartTime X
PerformedStationAETitle X
PerformedStationGeographicLocationCodeSequence X
PerformedStationName X
PerformedStationNameCodeSequence X
PerformingPhysicianIdentificationSequence X
PerformingPhysicianName X
PersonAddress X
PersonIdentificationCodeSequence X
PersonName D
PersonTelephoneNumbers X
PhysicianApprovingInterpretation X
PhysiciansOfRecord X
PhysiciansOfRecordIdentificationSequence X
PhysiciansReadingStudyIdentificationSequence X
PlacerOrderNumberImagingServiceRequest Z
PlateID X
PreMedication X
PregnancyStatus X
ProtocolName X
ReasonForTheImagingServiceRequest X
ReasonForStudy X
ReferencedDigitalSignatureSequence X
ReferencedFrameOfReferenceUID U
ReferencedGeneralPurposeScheduledProcedureStepTransactionUID U
ReferencedImageSequence U
ReferencedPatientAliasSequence X
ReferencedPatientPhotoSequence X
ReferencedPatientSequence X
ReferencedPerformedProcedureStepSequence X
ReferencedSOPInstanceMACSequence X
ReferencedSOPInstanceUID U
ReferencedSOPInstanceUIDInFile U
ReferencedStudySequence Z
ReferringPhysicianAddress X
ReferringPhysicianIdentificationSequence X
ReferringPhysicianName Z
ReferringPhysicianTelephoneNumbers X
RegionOfResidence X
RelatedFrameOfReferenceUID U
RequestAttributesSequence X
RequestedContrastAgent X
RequestedProcedureComments X
RequestedProcedureDescription Z
RequestedProcedureID X
RequestedProcedureLocation X
RequestedSOPInstanceUID U
RequestingPhysician X
RequestingService X
RequestingServiceCodeSequence X
ResponsibleOrganization X
ResponsiblePerson X
ResultsComments X
ResultsDistributionListSequence X
ResultsIDIssuer X
ReviewerName Z
ScheduledHumanPerformersSequence X
ScheduledPatientInstitutionResidence X
ScheduledPerformingPhysicianIdentificationSequence X
ScheduledPerformingPhysicianName X
ScheduledProcedureStepDescription X
ScheduledProcedureStepEndDate X
ScheduledProcedureStepEndTime X
ScheduledProcedureStepID X
ScheduledProcedureStepLocation X
ScheduledProcedureStepStartDate X
ScheduledProcedureStepStartTime X
ScheduledStationAETitle X
ScheduledStationGeographicLocationCodeSequence X
ScheduledStationName X
ScheduledStationNameCodeSequence X
ScheduledStudyLocation X
ScheduledStudyLocationAETitle X
SeriesDate X
SeriesDescription X
SeriesInstanceUID U
SeriesTime X
ServiceEpisodeDescription X
ServiceEpisodeID X
SmokingStatus X
SOPInstanceUID U
SoftwareVersions X
SourceImageSequence U
SpecialNeeds X
StationName X
StorageMediaFileSetUID U
StudyComments X
StudyDate Z
StudyDescription X
StudyID Z
StudyIDIssuer X
StudyInstanceUID U
StudyTime Z
SynchronizationFrameOfReferenceUID U
TargetUID U
TelephoneNumberTrial X
TemplateExtensionCreatorUID U
TemplateExtensionOrganizationUID U
TextComments X
TextString X
Time X
TimezoneOffsetFromUTC X
TopicAuthor X
TopicKeywords X
TopicSubject X
TopicTitle X
TransactionUID U
UID U
VerifyingObserverIdentificationCodeSequence Z
VerifyingObserverName D
VerifyingObserverSequence X
VerifyingOrganization X
VisitComments X
"""


def _parse_table(text: str) -> dict[BaseTag, str]:
    table: dict[BaseTag, str] = {}
    for line in text.strip().splitlines():
        keyword, action = line.split()
        tag = tag_for_keyword(keyword)
        if tag is None:  # pragma: no cover - guarded by a unit test
            raise ValueError(f"unknown DICOM keyword in the de-identification table: {keyword}")
        table[Tag(tag)] = action
    return table


#: PS3.15 E.1-1 basic-profile action per tag (D, Z, X, K, C, U)
BASIC_PROFILE: dict[BaseTag, str] = _parse_table(_TABLE_TEXT)

#: attributes kept by the "Retain Patient Characteristics" option (113108); PET SUV needs weight/size
PATIENT_CHARACTERISTICS = ("PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup",
                           "PregnancyStatus", "SmokingStatus", "PatientSexNeutered", "PatientState")
#: attributes kept by the "Retain Device Identity" option (113109)
DEVICE_IDENTITY = ("DeviceSerialNumber", "DetectorID", "GantryID", "GeneratorID", "PlateID", "CassetteID",
                   "StationName", "SoftwareVersions", "DeviceUID", "DeviceDescription")

#: private (creator, element-low-byte) pairs kept by ``keep_safe_private`` (PS3.15 E.3.10 safe attributes)
SAFE_PRIVATE: frozenset[tuple[str, int]] = frozenset({
    ("Philips PET Private Group", 0x00),  # (7053,xx00) SUV scale factor
    ("Philips PET Private Group", 0x09),  # (7053,xx09) activity concentration scale factor
    ("SIEMENS MR HEADER", 0x0C),  # (0019,xx0C) diffusion b-value
    ("SIEMENS MR HEADER", 0x0D),  # (0019,xx0D) diffusion directionality
    ("SIEMENS MR HEADER", 0x0E),  # (0019,xx0E) diffusion gradient direction
    ("GEMS_PARM_01", 0x39),  # (0043,xx39) GE diffusion b-value
})

#: UI attributes that name a class, a syntax or a coding scheme: never remapped
CLASS_UID_KEYWORDS = frozenset({
    "SOPClassUID", "ReferencedSOPClassUID", "ReferencedSOPClassUIDInFile", "MediaStorageSOPClassUID",
    "TransferSyntaxUID", "ReferencedTransferSyntaxUIDInFile", "AffectedSOPClassUID", "RequestedSOPClassUID",
    "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "CodingSchemeUID", "ContextUID",
    "MappingResourceUID", "ImplementationClassUID", "PrivateInformationCreatorUID", "SOPClassesInStudy",
    "SOPClassesSupported", "RetrieveAETitle", "ReferencedColorPaletteInstanceUID",
})

BURNED_IN_MODALITIES = frozenset({"US", "SC", "XC", "ES", "OT", "DOC", "SM", "GM"})

_DEID_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient": ("113108", "Retain Patient Characteristics Option"),
    "device": ("113109", "Retain Device Identity Option"),
    "private": ("113111", "Retain Safe Private Option"),
    "descriptors": ("113105", "Clean Descriptors Option"),
}
#: the order codes are written in (basic first, then the options)
_CODE_ORDER = ("basic", "dates", "patient", "descriptors", "device", "private")
#: descriptors kept (cleaned) by the Clean Descriptors option: they tell time points and reconstructions apart
CLEANED_DESCRIPTORS = ("SeriesDescription", "StudyDescription")
#: named profiles for ``profile_options`` / ``nmkit anonymize --profile``
PROFILES = ("basic", "research")

_DUMMY = {"PN": "ANONYMOUS", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED",
          "UT": "ANONYMIZED", "CS": "ANONYMIZED", "DA": "19000101", "TM": "000000.00", "DT": "19000101000000",
          "AS": "000Y", "IS": "0", "DS": "0", "UC": "ANONYMIZED", "AE": "ANONYMOUS"}


@dataclass
class DeidOptions:
    """Choices beyond the basic profile (each recorded in DeidentificationMethodCodeSequence)."""

    profile: str = "custom"  # the name recorded in DeidentificationMethod ("basic", "research" or "custom")
    date_mode: str = "shift"  # "shift": per-patient whole-day offset, times kept; "remove": dates emptied
    max_shift_days: int = 3650  # offsets are drawn in [-max_shift_days, -365]
    retain_patient_characteristics: bool = False  # keep sex/age/weight/size (needed for SUV)
    retain_device_identity: bool = False
    keep_safe_private: bool = False
    clean_descriptors: bool = False  # keep SeriesDescription/StudyDescription, patient name/ID replaced
    keep: tuple[str, ...] = ()  # extra keywords kept verbatim (e.g. SeriesDescription after review)

    def __post_init__(self) -> None:
        if self.date_mode not in ("shift", "remove"):
            raise ValueError(f"date_mode must be 'shift' or 'remove', got {self.date_mode!r}")
        for kw in self.keep:
            if tag_for_keyword(kw) is None:
                raise ValueError(f"unknown DICOM keyword to keep: {kw!r}")


def profile_options(name: str, **overrides: object) -> DeidOptions:
    """The options of a named profile (``basic`` or ``research``, see the module docstring), with overrides.

    Why profiles: the bare basic profile removes what quantification needs (weight, dates, descriptions);
    ``research`` keeps it under the PS3.15 options that allow it, and says so in the files.
    """
    if name == "basic":
        base = {"date_mode": "remove"}
    elif name == "research":
        base = {"date_mode": "shift", "retain_patient_characteristics": True, "clean_descriptors": True,
                "keep_safe_private": True}
    else:
        raise ValueError(f"unknown de-identification profile {name!r}; expected one of {PROFILES}")
    return DeidOptions(profile=name, **{**base, **overrides})  # type: ignore[arg-type]


def method_codes(options: DeidOptions) -> list[str]:
    """The PS3.16 CID 7050 code values that ``options`` amount to (113100 first)."""
    chosen = {"basic", "dates" if options.date_mode == "shift" else "",
              "patient" if options.retain_patient_characteristics else "",
              "descriptors" if options.clean_descriptors else "",
              "device" if options.retain_device_identity else "",
              "private" if options.keep_safe_private else ""}
    return [_DEID_CODES[key][0] for key in _CODE_ORDER if key in chosen]


def effective_actions(options: DeidOptions) -> dict[BaseTag, str]:
    """The action per tag once ``options`` are applied (options turn some actions into K, descriptors into C)."""
    actions = dict(BASIC_PROFILE)
    if options.clean_descriptors:
        for kw in CLEANED_DESCRIPTORS:
            actions[Tag(tag_for_keyword(kw))] = "C"
    kept: list[str] = list(options.keep)
    if options.retain_patient_characteristics:
        kept += PATIENT_CHARACTERISTICS
    if options.retain_device_identity:
        kept += DEVICE_IDENTITY
    for kw in kept:
        actions[Tag(tag_for_keyword(kw))] = "K"
    return actions


def _digest(salt: str, kind: str, value: str) -> bytes:
    return hmac.new(salt.encode(), f"{kind}\x00{value}".encode(), hashlib.sha256).digest()


def hashed_uid(uid: str, salt: str) -> str:
    """A new UID ``2.25.<decimal of 128 bits of a salted hash>``: deterministic, <= 44 characters."""
    return "2.25." + str(int.from_bytes(_digest(salt, "uid", uid)[:16], "big"))


def is_well_known_uid(uid: str) -> bool:
    """DICOM-defined UIDs (SOP classes, transfer syntaxes, coding schemes, well-known frames)."""
    return uid.startswith("1.2.840.10008.")


@dataclass
class DeidMapping:
    """Original -> pseudonym tables; loaded from and saved to a CSV kept apart from the images."""

    patients: dict[str, str] = field(default_factory=dict)  # original PatientID -> pseudonym
    names: dict[str, str] = field(default_factory=dict)  # original PatientName -> pseudonym
    date_offsets: dict[str, int] = field(default_factory=dict)  # pseudonym -> days
    uids: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "DeidMapping":
        mapping = cls()
        path = Path(path)
        if not path.exists():
            return mapping
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    kind, original, new = row["kind"], row["original"], row["pseudonym"]
                    if kind == "patient_id":
                        mapping.patients[original] = new
                    elif kind == "patient_name":
                        mapping.names[original] = new
                    elif kind == "date_offset_days":
                        mapping.date_offsets[original] = int(new)
                    elif kind == "uid":
                        mapping.uids[original] = new
        except (KeyError, ValueError, csv.Error) as exc:
            raise InputError(path, f"not a valid nmkit de-identification mapping file ({exc})") from exc
        return mapping

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["kind", "original", "pseudonym"])
            for kind, table in (("patient_id", self.patients), ("patient_name", self.names),
                                ("date_offset_days", self.date_offsets), ("uid", self.uids)):
                for original, new in sorted(table.items()):
                    writer.writerow([kind, original, new])


def _shift_date(value: str, days: int) -> str:
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return ""  # unparseable dates cannot be shifted safely: empty them
    try:
        day = _dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return ""
    return (day + _dt.timedelta(days=days)).strftime("%Y%m%d") + value[8:]


@dataclass
class FileResult:
    """What happened to one input file."""

    source: str
    output: str = ""
    error: str = ""
    burned_in_annotation: str = ""  # "YES" / "likely (<modality>)" / ""
    not_dicom: bool = False  # no DICOM preamble and unreadable: skipped, not counted as a failure
    warnings: list[str] = field(default_factory=list)  # pydicom warnings while reading/writing this file


def _clean_text(text: str, identifiers: dict[str, str]) -> str:
    """``text`` with every identifier (as a whole token, any case) replaced by its substitute."""
    for value, substitute in sorted(identifiers.items(), key=lambda kv: -len(kv[0])):
        pattern = r"(?<![A-Za-z0-9])" + re.escape(value) + r"(?![A-Za-z0-9])"
        text = re.sub(pattern, substitute, text, flags=re.IGNORECASE)
    return text


def _identifiers(patient_id: str, patient_name: str, pseudonym: str) -> dict[str, str]:
    """Strings that would identify the patient in free text: the ID and each part of the name (>= 2 chars)."""
    out: dict[str, str] = {}
    for part in re.split(r"[\^ ,]+", patient_name):
        if len(part.strip()) >= 2:
            out[part.strip()] = "X"
    if patient_id.strip():
        out[patient_id.strip()] = pseudonym
    return out


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


class Deidentifier:
    """Applies the profile to datasets with one salt and one mapping (consistent across files and runs)."""

    def __init__(self, salt: str, options: DeidOptions | None = None, mapping: DeidMapping | None = None,
                 dicom_warnings: DicomWarnings | None = None):
        if not salt:
            raise ValueError("a non-empty salt is required (keep it secret; the same salt gives the same pseudonyms)")
        self.salt = salt
        self.options = options or profile_options("research")
        self.mapping = mapping or DeidMapping()
        self.actions = effective_actions(self.options)
        self._identifiers: dict[str, str] = {}
        self.dicom_warnings = dicom_warnings if dicom_warnings is not None else DicomWarnings()

    # ----- pseudonyms ------------------------------------------------------------------------------
    def pseudonym(self, patient_id: str, patient_name: str = "") -> str:
        key = patient_id or patient_name
        if key in self.mapping.patients:
            return self.mapping.patients[key]
        if not patient_id and patient_name in self.mapping.names:
            return self.mapping.names[patient_name]
        pseudo = "NMK" + _digest(self.salt, "patient", key).hex()[:12].upper()
        self.mapping.patients[key] = pseudo
        return pseudo

    def date_offset(self, pseudonym: str) -> int:
        if pseudonym not in self.mapping.date_offsets:
            span = max(self.options.max_shift_days - 365, 1)
            self.mapping.date_offsets[pseudonym] = -(365 + int.from_bytes(_digest(self.salt, "date", pseudonym)[:4], "big") % span)
        return self.mapping.date_offsets[pseudonym]

    def uid(self, original: str) -> str:
        original = original.strip().rstrip("\x00")
        if not original or is_well_known_uid(original):
            return original
        new = self.mapping.uids.get(original)
        if new is None:
            new = self.mapping.uids[original] = hashed_uid(original, self.salt)
        return new

    # ----- the dataset walk ------------------------------------------------------------------------
    def deidentify(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (and return it)."""
        pid = str(ds.get("PatientID", "") or "")
        pname = str(ds.get("PatientName", "") or "")
        pseudo = self.pseudonym(pid, pname)
        if pname:
            self.mapping.names.setdefault(pname, pseudo)
        offset = self.date_offset(pseudo) if self.options.date_mode == "shift" else None
        self._identifiers = _identifiers(pid, pname, pseudo)
        self._walk(ds, offset)
        ds.PatientID = pseudo
        ds.PatientName = pseudo
        ds.PatientIdentityRemoved = "YES"
        codes = method_codes(self.options)
        ds.DeidentificationMethod = deidentification_method_text(self.options)
        meanings = {code: meaning for code, meaning in _DEID_CODES.values()}
        items = []
        for code in codes:
            item = Dataset()
            item.CodeValue, item.CodeMeaning = code, meanings[code]
            item.CodingSchemeDesignator = "DCM"
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if offset is not None else "REMOVED"
        return ds

    def _walk(self, ds: Dataset, offset: int | None) -> None:
        self._strip_private(ds)
        for elem in list(ds):
            tag = elem.tag
            group = tag.group
            if tag.is_private:
                continue  # only kept safe private attributes (and their creators) are left
            if 0x5000 <= group <= 0x50FF and group % 2 == 0:  # curves (retired) -> X
                del ds[tag]
                continue
            if 0x6000 <= group <= 0x60FF and group % 2 == 0 and tag.element in (0x3000, 0x4000):  # overlay data/comments
                del ds[tag]
                continue
            action = self.actions.get(tag)
            kw = keyword_for_tag(tag)
            if elem.VR == "SQ":
                if action == "X":
                    del ds[tag]
                elif action in ("Z", "D"):
                    elem.value = Sequence()
                else:
                    for item in elem.value:
                        self._walk(item, offset)
                continue
            if action == "K":
                continue
            if elem.VR in ("DA", "DT") and offset is not None and kw != "PatientBirthDate" and action != "U":
                values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
                shifted = [_shift_date(str(v), offset) for v in values if v not in (None, "")]
                elem.value = shifted if len(shifted) > 1 else (shifted[0] if shifted else "")
                continue
            if elem.VR == "TM" and offset is not None and action in ("X", "Z", "D") and kw != "PatientBirthTime":
                continue  # modified-dates option: whole-day shifts keep times (decay correction needs them)
            if elem.VR == "UI":
                if kw in CLASS_UID_KEYWORDS or action == "K":
                    continue
                if action == "X":
                    del ds[tag]
                    continue
                values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
                new = [self.uid(str(v)) for v in values if v not in (None, "")]
                elem.value = new if len(new) > 1 else (new[0] if new else "")
                continue
            if action == "C":
                if isinstance(elem.value, str):
                    elem.value = _clean_text(elem.value, self._identifiers)
                else:
                    del ds[tag]  # not free text: nothing to clean safely
            elif action == "X":
                del ds[tag]
            elif action == "Z":
                elem.value = None if elem.VR not in ("PN",) else ""
            elif action == "D":
                elem.value = _DUMMY.get(elem.VR, None)
            elif action == "U":
                pass  # non-UI element with U action: none in the table
            elif elem.VR in ("DA", "DT") and offset is None:
                elem.value = ""  # date_mode="remove": every date outside the table is emptied too

    def _strip_private(self, ds: Dataset) -> None:
        """Remove private attributes, except known-safe ones when ``keep_safe_private`` is set."""
        creators = {(e.tag.group, e.tag.element): str(e.value) for e in ds
                    if e.tag.is_private and 0x10 <= e.tag.element <= 0xFF}
        kept_blocks: set[tuple[int, int]] = set()
        for elem in list(ds):
            tag = elem.tag
            if not tag.is_private or 0x10 <= tag.element <= 0xFF:
                continue
            block = (tag.group, tag.element >> 8)
            creator = creators.get(block, "")
            if self.options.keep_safe_private and (creator, tag.element & 0xFF) in SAFE_PRIVATE:
                kept_blocks.add(block)
            else:
                del ds[tag]
        for block in creators:
            if block not in kept_blocks:
                del ds[Tag(block[0], block[1])]

    # ----- files -----------------------------------------------------------------------------------
    def deidentify_file(self, src: str | Path, out_dir: str | Path) -> FileResult:
        """Read ``src``, de-identify it, write it under ``out_dir/<pseudonym>/<study>/<series>/<sop>.dcm``.

        pydicom warnings (malformed values and the like) are silenced and collected in ``self.dicom_warnings``
        and ``FileResult.warnings``; the caller reports them (one line per file at most).
        """
        with self.dicom_warnings.capture(src) as messages:
            result = self._deidentify_file(Path(src), Path(out_dir))
        result.warnings = list(messages)
        return result

    def _deidentify_file(self, src: Path, out_dir: Path) -> FileResult:
        result = FileResult(source=str(src))
        try:
            ds = pydicom.dcmread(str(src))
        except Exception as exc:
            from .dicom_series import unreadable_reason

            raise DicomReadError(src, unreadable_reason(exc)) from exc
        if "SOPInstanceUID" not in ds:
            raise DicomReadError(src, "no SOPInstanceUID (0008,0018): not a composite DICOM instance")
        burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
        modality = str(ds.get("Modality", "") or "")
        if burned == "YES":
            result.burned_in_annotation = "YES"
        elif modality in BURNED_IN_MODALITIES and burned != "NO":
            result.burned_in_annotation = f"likely ({modality})"
        ts = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(ds, "file_meta", Dataset()) else pydicom.uid.ExplicitVRLittleEndian
        if ts == pydicom.uid.DeflatedExplicitVRLittleEndian:
            ts = pydicom.uid.ExplicitVRLittleEndian  # deflate only compresses the dataset encoding, not pixels
        self.deidentify(ds)
        set_file_meta(ds, ts, "NMKIT_DEID")
        target = instance_path(out_dir, ds)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(str(target), enforce_file_format=True)
        result.output = str(target)
        return result


def deidentification_method_text(options: DeidOptions) -> str:
    """DeidentificationMethod (LO, <= 64 chars): ``nmkit profile <name>: PS3.15 basic+<option code>+...``."""
    head = f"nmkit profile {options.profile}: PS3.15 basic"
    text = "+".join([head] + method_codes(options)[1:])
    if options.keep:
        text += "; kept " + ",".join(options.keep)
    return text if len(text) <= 64 else head + "+options in code sequence"


def profile_of(ds: Dataset) -> str | None:
    """The nmkit profile name recorded in ``ds`` (None when the file was not de-identified by nmkit)."""
    match = re.match(r"nmkit profile (\w+)", str(ds.get("DeidentificationMethod", "") or ""))
    return match.group(1) if match else None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def anonymize_tree(src: str | Path, out_dir: str | Path, map_path: str | Path, salt: str,
                   options: DeidOptions | None = None, files: Iterable[Path] | None = None,
                   progress: Callable[[Iterable], Iterable] | None = None,
                   dicom_warnings: DicomWarnings | None = None) -> list[FileResult]:
    """De-identify every DICOM file under ``src`` into ``out_dir``; write the mapping CSV to ``map_path``.

    ``options`` default to the ``research`` profile. Unreadable files are logged and skipped (recorded with
    their error; files without a DICOM preamble that do not parse are marked ``not_dicom`` and logged at
    debug level only). The mapping file is loaded first when it exists, so pseudonyms stay the same across
    runs; it must not lie inside ``out_dir``. pydicom warnings go to ``dicom_warnings`` (report them with
    ``DicomWarnings.report``) and to each ``FileResult.warnings``.
    """
    from .dicom_series import iter_dicom_files

    src, out_dir, map_path = Path(src), Path(out_dir), Path(map_path)
    if not src.exists():
        raise InputError(src, "input folder does not exist")
    if _inside(map_path, out_dir):
        raise InputError(map_path, f"the mapping file must be kept outside the output folder {out_dir}")
    if src.is_dir() and _inside(out_dir, src):
        raise InputError(out_dir, "the output folder must not be inside the input folder")
    deid = Deidentifier(salt, options, DeidMapping.load(map_path), dicom_warnings)
    paths = list(files) if files is not None else list(iter_dicom_files(src))
    results: list[FileResult] = []
    for path in (progress(paths) if progress else paths):
        try:
            results.append(deid.deidentify_file(path, out_dir))
        except Exception as exc:  # batch job: log and skip a bad file
            not_dicom = isinstance(exc, DicomReadError) and "not a readable DICOM" in str(exc) \
                and not _has_dicom_preamble(Path(path))
            log.log(logging.DEBUG if not_dicom else logging.WARNING, "skipping %s: %s", path, exc)
            results.append(FileResult(source=str(path), error=str(exc), not_dicom=not_dicom))
    deid.mapping.save(map_path)
    return results
