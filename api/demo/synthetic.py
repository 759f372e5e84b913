"""A synthetic region: organisations, patients and realistic studies, reproducible from a seed.

Used by ``cami demo``, the tests and the benchmarks. Everything is derived from the seed (UIDs,
names, dates, pixel noise), so the same call always produces the same objects, byte for byte.

What the objects carry is exactly what :func:`ingest.validation.inspect` reads:

- patient: PatientID (a 16-digit insurance policy number, the regional unique ID), PatientName
  in Cyrillic, birth date, sex; the organisation's character set (``ISO_IR 192`` UTF-8,
  ``ISO_IR 144`` ISO 8859-5, or ``\\ISO 2022 IR 144`` with escape sequences);
- the performing doctor: PerformingPhysicianName plus PerformingPhysicianIdentificationSequence >
  PersonIdentificationCodeSequence > CodeValue (a SNILS-style code from the regional directory);
- the procedure: ProcedureCodeSequence with a code of the federal nomenclature of medical services
  (designator ``RU-NMU``) and its Russian meaning;
- marks in the private block ``CAMI`` of group 0x0011: (0011,xx10) ``Y``/``N`` pathology,
  (0011,xx11) ``EMERGENCY``/``ROUTINE``.

Transfer syntaxes: Implicit/Explicit VR Little Endian and Deflated Explicit VR always; RLE
Lossless with pydicom's own encoder; JPEG-LS Lossless (pyjpegls) and JPEG 2000 Lossless
(pylibjpeg + pylibjpeg-openjpeg) when those encoders are installed (they are project
dependencies; :func:`available_transfer_syntaxes` says what this interpreter can produce).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from ingest.validation import PATHOLOGY_ELEMENT, PRIORITY_ELEMENT, PRIVATE_CREATOR, PRIVATE_GROUP

#: pydicom's organisation root; every UID below it is derived from the seed (sha512 of entropy)
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
REGION_ROOT = "1.2.643.5.1.13.13.12.2.50"  # register of medical organisations, region 50
PROCEDURE_SCHEME = "RU-NMU"  # federal nomenclature of medical services (order 804n)
DOCTOR_SCHEME = "RU-FRMR"  # federal register of medical workers (SNILS as the code)
POLICY_ISSUER = "RU-OMS"

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SOP_CLASSES = {"CT": CT_IMAGE, "MR": MR_IMAGE, "DX": DX_PRESENTATION, "MG": MG_PRESENTATION, "US": US_IMAGE}
MODALITIES = tuple(SOP_CLASSES)

CHARSETS: dict[str, str | list[str]] = {
    "ISO_IR 192": "ISO_IR 192",
    "ISO_IR 144": "ISO_IR 144",
    "ISO 2022 IR 144": ["", "ISO 2022 IR 144"],
}

#: what ``incomplete=`` may leave out: the names :func:`ingest.validation.inspect` reports
INCOMPLETE_ATTRIBUTES = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PerformingPhysicianCode",
    "PerformingPhysicianName",
    "ProcedureCode",
    "ProcedureCodeMeaning",
)


@dataclass(frozen=True)
class Organisation:
    code: str
    name: str
    ae_title: str
    modalities: tuple[str, ...]
    #: the character set its local PACS writes
    charset: str = "ISO_IR 192"


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str  # DICOM PN: Family^Given^Middle
    birth_date: str  # YYYYMMDD
    sex: str  # M / F


@dataclass
class SyntheticStudy:
    organisation: Organisation
    study_uid: str
    patient_id: str
    patient_name: str
    modality: str
    instances: list[Dataset]
    pathology: bool
    emergency: bool
    #: regional attributes deliberately left out (names as ``inspect`` reports them)
    missing: tuple[str, ...]
    #: (doctor code, doctor name, protocol text, conclusion text), or None when not yet written
    report: tuple[str, str, str, str] | None
    transfer_syntax: str = ExplicitVRLittleEndian
    charset: str = "ISO_IR 192"
    procedure: tuple[str, str] = ("", "")
    study_date: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes of pixel data and attributes (roughly what goes over the wire)."""
        return sum(len(bytes(ds.PixelData)) for ds in self.instances if "PixelData" in ds)

    @property
    def series_uids(self) -> list[str]:
        return sorted({str(ds.SeriesInstanceUID) for ds in self.instances})


# -- the region ------------------------------------------------------------------------------------
_ORGANISATIONS = (
    Organisation(
        f"{REGION_ROOT}.1001", 'ГБУЗ МО "Областная клиническая больница"', "OKB_PACS", ("CT", "MR", "DX"), "ISO_IR 192"
    ),
    Organisation(
        f"{REGION_ROOT}.1002",
        'ГБУЗ МО "Городская клиническая больница №2"',
        "GKB2_PACS",
        ("CT", "US", "DX"),
        "ISO 2022 IR 144",
    ),
    Organisation(
        f"{REGION_ROOT}.1003",
        'ГБУЗ МО "Областной онкологический диспансер"',
        "ONKO_PACS",
        ("MG", "CT", "MR"),
        "ISO_IR 144",
    ),
    Organisation(
        f"{REGION_ROOT}.1004", 'ГБУЗ МО "Центральная районная больница"', "CRB_DX1", ("DX", "US"), "ISO_IR 144"
    ),
    Organisation(
        f"{REGION_ROOT}.1005", 'ГБУЗ МО "Детская областная больница"', "DOB_PACS", ("US", "DX", "MR"), "ISO_IR 192"
    ),
)
_TOWNS = ("Коломенская", "Ступинская", "Клинская", "Рузская", "Шатурская", "Озёрская", "Каширская", "Лотошинская")
_KINDS = ("центральная районная больница", "городская больница", "районная больница", "поликлиника")


def region(seed: int = 1, organisations: int = 5) -> list[Organisation]:
    """The region's organisations. The first five are always the same (so a senders file written
    for one seed stays valid); larger regions (benchmarks: 20-50 organisations) add seeded ones."""
    orgs = list(_ORGANISATIONS[:organisations])
    rng = random.Random(f"region-{seed}")
    charsets = list(CHARSETS)
    for n in range(len(orgs), organisations):
        town = rng.choice(_TOWNS)
        kind = rng.choice(_KINDS)
        modalities = tuple(rng.sample(MODALITIES, rng.randint(1, 3)))
        orgs.append(
            Organisation(
                f"{REGION_ROOT}.{2000 + n}",
                f'ГБУЗ МО "{town} {kind} №{n}"',
                f"ORG{n:03d}_{modalities[0]}",
                modalities,
                rng.choice(charsets),
            )
        )
    return orgs


# -- people ----------------------------------------------------------------------------------------
_SURNAMES = (
    "Иванов", "Петров", "Смирнов", "Кузнецов", "Соколов", "Попов", "Лебедев", "Козлов", "Новиков", "Морозов",
    "Волков", "Соловьёв", "Васильев", "Зайцев", "Павлов", "Семёнов", "Голубев", "Виноградов", "Богданов", "Воробьёв",
    "Фёдоров", "Михайлов", "Беляев", "Тарасов", "Белов", "Комаров", "Орлов", "Киселёв", "Макаров", "Андреев",
)  # fmt: skip
_MALE = ("Александр", "Сергей", "Дмитрий", "Андрей", "Алексей", "Иван", "Михаил", "Николай", "Юрий", "Пётр", "Олег")
_FEMALE = ("Елена", "Ольга", "Наталья", "Татьяна", "Ирина", "Анна", "Мария", "Светлана", "Юлия", "Людмила", "Дарья")
_FATHERS = ("Александр", "Сергей", "Иван", "Николай", "Михаил", "Пётр", "Владимир", "Виктор", "Геннадий", "Юрий")


def _patronymic(father: str, sex: str) -> str:
    stem = {"Николай": "Николаев", "Юрий": "Юрьев", "Пётр": "Петров", "Геннадий": "Геннадьев"}.get(father)
    if stem is None:
        stem = father + "ов"
    return stem + ("ич" if sex == "M" else "на")


def _person(rng: random.Random, sex: str) -> str:
    surname = rng.choice(_SURNAMES)
    if sex == "F":
        surname += "а"
    given = rng.choice(_MALE if sex == "M" else _FEMALE)
    return f"{surname}^{given}^{_patronymic(rng.choice(_FATHERS), sex)}"


def synthetic_patient(seed: int) -> Patient:
    rng = random.Random(f"patient-{seed}")
    sex = rng.choice("MF")
    born = date(1935, 1, 1) + timedelta(days=rng.randint(0, 85 * 365))
    policy = "".join(str(rng.randint(0, 9)) for _ in range(16))
    return Patient(policy, _person(rng, sex), born.strftime("%Y%m%d"), sex)


def _doctor(org: Organisation, rng: random.Random) -> tuple[str, str]:
    """(SNILS-style code from the regional directory, PN) of one of the organisation's doctors."""
    number = rng.randint(1, 6)
    doctor = random.Random(f"doctor-{org.code}-{number}")
    digits = [doctor.randint(0, 9) for _ in range(9)]
    check = sum(d * (9 - i) for i, d in enumerate(digits)) % 101 % 100
    code = "{}{}{}-{}{}{}-{}{}{} ".format(*digits) + f"{check:02d}"
    return code, _person(doctor, doctor.choice("MF"))


# -- procedures and reports ------------------------------------------------------------------------
_PROCEDURES: dict[str, list[tuple[str, str, str]]] = {  # code, meaning, body part
    "CT": [
        ("A06.09.005", "Компьютерная томография органов грудной полости", "CHEST"),
        ("A06.23.004", "Компьютерная томография головного мозга", "HEAD"),
        ("A06.30.005", "Компьютерная томография органов брюшной полости", "ABDOMEN"),
    ],
    "MR": [
        ("A05.23.009", "Магнитно-резонансная томография головного мозга", "HEAD"),
        ("A05.03.002", "Магнитно-резонансная томография позвоночника (один отдел)", "LSPINE"),
        ("A05.04.001", "Магнитно-резонансная томография суставов (один сустав)", "KNEE"),
    ],
    "DX": [
        ("A06.09.007", "Рентгенография легких", "CHEST"),
        ("A06.03.036", "Рентгенография нижней конечности", "LEG"),
    ],
    "MG": [("A06.20.004", "Маммография", "BREAST")],
    "US": [
        ("A04.14.001", "Ультразвуковое исследование печени", "ABDOMEN"),
        ("A04.22.001", "Ультразвуковое исследование щитовидной железы и паращитовидных желез", "NECK"),
        ("A04.10.002", "Эхокардиография", "HEART"),
    ],
}
_FINDINGS: dict[str, tuple[str, str]] = {  # (pathology protocol, conclusion)
    "CHEST": (
        "В S6 правого лёгкого субплевральный солидный очаг 14×11 мм с неровными контурами. "
        "Внутригрудные лимфоузлы не увеличены. Плевральные полости свободны.",
        "Периферическое образование S6 правого лёгкого. Рекомендована консультация онколога.",
    ),
    "HEAD": (
        "В правой лобной доле зона пониженной плотности 22×18 мм без масс-эффекта. "
        "Срединные структуры не смещены. Желудочки не расширены.",
        "Признаки ишемического очага в правой лобной доле.",
    ),
    "ABDOMEN": (
        "В S7 печени гиподенсное образование 28 мм с ободковым накоплением контраста. "
        "Селезёнка, поджелудочная железа без особенностей.",
        "Объёмное образование S7 печени, требует дообследования.",
    ),
    "LSPINE": (
        "Дегенеративные изменения L4-L5, L5-S1. Задняя парамедианная грыжа диска L5-S1 до 7 мм, "
        "компримирующая левый корешок S1.",
        "Грыжа диска L5-S1 с компрессией корешка S1 слева.",
    ),
    "KNEE": (
        "Горизонтальный разрыв заднего рога медиального мениска, выходящий на суставную поверхность. Синовит.",
        "Разрыв заднего рога медиального мениска. Синовит.",
    ),
    "LEG": (
        "Поперечный перелом диафиза большеберцовой кости в средней трети со смещением отломков на 4 мм.",
        "Перелом диафиза большеберцовой кости со смещением.",
    ),
    "BREAST": (
        "В верхне-наружном квадранте левой молочной железы узловое образование 12 мм "
        "со спикулами, сгруппированные микрокальцинаты.",
        "Образование левой молочной железы, BI-RADS 5.",
    ),
    "NECK": (
        "В правой доле щитовидной железы гипоэхогенный узел 16×12 мм с микрокальцинатами, неровным контуром.",
        "Узел правой доли щитовидной железы, TI-RADS 5.",
    ),
    "HEART": (
        "Акинез нижней стенки левого желудочка. Фракция выброса 38%. Митральная регургитация II степени.",
        "Нарушение локальной сократимости миокарда ЛЖ, снижение глобальной сократимости.",
    ),
}
_NORMAL = (
    "Исследование выполнено по стандартному протоколу. Патологических изменений не выявлено. "
    "Анатомические структуры без особенностей.",
    "Без патологических изменений.",
)


# -- pixel data ------------------------------------------------------------------------------------
def _grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    return (y - rows / 2) / (rows / 2), (x - cols / 2) / (cols / 2)


def _noise(rng: np.random.Generator, rows: int, cols: int, scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, (rows, cols)).astype(np.float32)


def _ct_slice(rows: int, cols: int, z: float, lesion: bool, rng: np.random.Generator) -> np.ndarray:
    """A chest/head-like phantom in stored values (HU + 1024), 12 bits."""
    y, x = _grid(rows, cols)
    hu = np.full((rows, cols), -1000.0, dtype=np.float32)  # air
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1.0
    hu[body] = 40.0  # soft tissue
    for side in (-1, 1):  # lungs shrink towards the ends of the scan
        lung = ((x - side * 0.38) / (0.28 * (1 - 0.4 * abs(z)))) ** 2 + (y / 0.45) ** 2 < 1.0
        hu[lung] = -850.0
    hu[(x**2 + (y - 0.45) ** 2) < 0.012] = 700.0  # vertebra
    hu[((x + 0.05) ** 2 + (y + 0.1) ** 2) < 0.02] = 60.0  # heart / mediastinum
    if lesion and abs(z) < 0.3:
        hu[((x - 0.45) ** 2 + (y - 0.1) ** 2) < 0.004 * (1 - abs(z) * 3)] = 35.0
    hu += _noise(rng, rows, cols, 12.0)
    stored: np.ndarray = np.clip(hu + 1024.0, 0, 4095).astype(np.uint16)
    return stored


def _mr_slice(rows: int, cols: int, z: float, weighting: int, lesion: bool, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(rows, cols)
    shrink = max(0.2, 1 - abs(z) * 0.8)
    img = np.zeros((rows, cols), dtype=np.float32)
    img[(x / (0.8 * shrink)) ** 2 + (y / (0.9 * shrink)) ** 2 < 1.0] = 900.0  # scalp / skull
    img[(x / (0.72 * shrink)) ** 2 + (y / (0.82 * shrink)) ** 2 < 1.0] = 600.0 + 250.0 * weighting  # brain
    img[(x / 0.08) ** 2 + (y / (0.25 * shrink)) ** 2 < 1.0] = 300.0 + 900.0 * (weighting == 1)  # ventricles (CSF)
    if lesion:
        img[((x + 0.3) ** 2 + (y + 0.3) ** 2) < 0.01 * shrink] = 1800.0
    img += _noise(rng, rows, cols, 25.0) + 200.0 * np.exp(-(x**2 + y**2))  # coil shading
    return np.clip(img, 0, 4095).astype(np.uint16)


def _projection(rows: int, cols: int, breast: bool, side: int, lesion: bool, rng: np.random.Generator) -> np.ndarray:
    """A radiograph: smooth anatomy-like gradients, 12 bits (presentation: higher = brighter)."""
    y, x = _grid(rows, cols)
    if breast:  # a half-disc of tissue against the chest wall on one side
        r = np.sqrt(((x + side * 1.0) / 1.6) ** 2 + (y / 0.95) ** 2)
        img = np.where(r < 1.0, 1400.0 + 900.0 * (1 - r) + 300.0 * np.sin(8 * x * y), 60.0)
        if lesion:
            img[((x + side * 0.4) ** 2 + (y + 0.3) ** 2) < 0.003] = 3200.0
    else:  # chest: mediastinum, lungs, ribs
        img = 2600.0 - 1800.0 * np.exp(-(((abs(x) - 0.42) / 0.25) ** 2 + (y / 0.55) ** 2))
        img += 250.0 * (np.sin(y * 30.0) > 0.85) * (abs(x) > 0.15)
        if lesion:
            img[((x - 0.45) ** 2 + (y + 0.2) ** 2) < 0.004] = 2400.0
    img += _noise(rng, rows, cols, 18.0)
    return np.clip(img, 0, 4095).astype(np.uint16)


def _ultrasound(rows: int, cols: int, lesion: bool, rng: np.random.Generator) -> np.ndarray:
    """An RGB sector scan with speckle and a yellow annotation strip."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = -0.1 * rows, cols / 2
    r = np.hypot(y - cy, x - cx) / rows
    angle = np.arctan2(x - cx, y - cy)
    sector = (np.abs(angle) < 0.6) & (r > 0.15) & (r < 1.05)
    speckle = rng.rayleigh(0.35, (rows, cols)).astype(np.float32)
    gray = np.where(sector, np.clip(120.0 * speckle * (1.1 - r * 0.6), 0, 255), 0.0)
    if lesion:
        gray[((y - 0.55 * rows) ** 2 + (x - cx) ** 2) < (0.06 * rows) ** 2] *= 0.25
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgb[4:12, 8 : cols // 3] = (230, 200, 40)  # annotation bar
    return rgb.astype(np.uint8)


# -- studies ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Series:
    description: str
    count: int
    kind: str  # scout, axial, t1, t2, flair, view, frame
    thickness: float = 5.0
    view: str = ""


def _layout(modality: str, rng: random.Random, realistic: bool, instances: int | None, body: str) -> list[_Series]:
    if modality == "CT":
        if realistic:
            series = [
                _Series("Топограмма", 1, "scout"),
                _Series("Аксиальные 5 мм", rng.randint(50, 80), "axial", 5.0),
                _Series("Аксиальные 1 мм", rng.randint(200, 400), "axial", 1.0),
            ]
        else:
            series = [
                _Series("Топограмма", 1, "scout"),
                _Series("Аксиальные 5 мм", rng.randint(8, 14), "axial", 5.0),
                _Series("Аксиальные 2 мм", rng.randint(16, 26), "axial", 2.0),
            ]
    elif modality == "MR":
        low, high = (20, 40) if realistic else (6, 10)

        def n() -> int:
            return rng.randint(low, high)

        series = [_Series("T1 SE ax", n(), "t1", 5.0), _Series("T2 TSE ax", n(), "t2", 5.0)]
        series.append(_Series("T2 FLAIR ax" if body == "HEAD" else "PD FS sag", n(), "flair", 4.0))
    elif modality == "DX":
        views = ["PA", "LL"] if body == "CHEST" else ["AP", "LL"]
        series = [_Series(f"{body} {v}", 1, "view", view=v) for v in views[: rng.randint(1, 2)]]
    elif modality == "MG":
        series = [_Series(f"{side} {view}", 1, "view", view=f"{side}{view}") for side in "RL" for view in ("CC", "MLO")]
    else:  # US
        series = [_Series("B-режим", rng.randint(4, 12) if not realistic else rng.randint(20, 60), "frame")]
    if instances is not None:
        series = _distribute(series, instances)
    return series


def _distribute(series: list[_Series], total: int) -> list[_Series]:
    """Spread ``total`` instances over the layout's series (a scout keeps one image)."""
    if total < 1:
        raise ValueError("a study needs at least one instance")
    fixed = [s for s in series if s.kind == "scout"][: max(0, total - 1)]
    rest = [s for s in series if s.kind != "scout"]
    left = total - len(fixed)
    if len(rest) == 1 or rest[0].kind == "view":
        if rest[0].kind == "view":  # projections: repeat the views
            return fixed + [replace(rest[i % len(rest)], count=1) for i in range(left)]
        return [*fixed, replace(rest[0], count=left)]
    shares = [left // len(rest) + (1 if i < left % len(rest) else 0) for i in range(len(rest))]
    return fixed + [replace(s, count=c) for s, c in zip(rest, shares, strict=True) if c > 0]


def _uid(*parts: object) -> str:
    return str(generate_uid(UID_PREFIX, [str(p) for p in parts]))


def _image_size(modality: str, realistic: bool) -> tuple[int, int]:
    return {
        "CT": (512, 512) if realistic else (256, 256),
        "MR": (512, 512) if realistic else (256, 256),
        "DX": (2048, 2048) if realistic else (512, 512),
        "MG": (3328, 2560) if realistic else (640, 512),
        "US": (600, 800) if realistic else (240, 320),
    }[modality]


def synthetic_study(
    org: Organisation,
    modality: str,
    *,
    instances: int | None = None,
    seed: int,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pathology: bool = False,
    emergency: bool = False,
    incomplete: Sequence[str] = (),
    patient: Patient | None = None,
    charset: str | None = None,
    realistic: bool = False,
    report: bool = True,
) -> SyntheticStudy:
    """One study of ``modality`` from ``org``, fully determined by the arguments.

    ``instances`` fixes the number of objects (spread over the modality's series); ``realistic``
    uses clinical image sizes (CT/MR 512x512, DX 2048², MG 3328x2560) and series lengths;
    ``incomplete`` names regional attributes to leave out (see :data:`INCOMPLETE_ATTRIBUTES`)."""
    if modality not in SOP_CLASSES:
        raise ValueError(f"unsupported modality {modality!r}; one of {', '.join(MODALITIES)}")
    unknown = set(incomplete) - set(INCOMPLETE_ATTRIBUTES)
    if unknown:
        raise ValueError(f"cannot leave out {sorted(unknown)}; one of {', '.join(INCOMPLETE_ATTRIBUTES)}")
    charset = charset or org.charset
    if charset not in CHARSETS:
        raise ValueError(f"unsupported character set {charset!r}; one of {', '.join(CHARSETS)}")
    if transfer_syntax not in available_transfer_syntaxes():
        raise ValueError(f"cannot produce transfer syntax {transfer_syntax} here (encoder not installed)")
    rng = random.Random(f"study-{seed}-{org.code}-{modality}")
    patient = patient or synthetic_patient(rng.randint(0, 10**9))
    code, meaning, body = rng.choice(_PROCEDURES[modality])
    doctor_code, doctor_name = _doctor(org, rng)
    referring = _person(rng, rng.choice("MF"))
    started = datetime(2025, 1, 9, 8, 0) + timedelta(days=rng.randint(0, 360), minutes=rng.randint(0, 600))
    study_uid = _uid("study", seed, org.code, modality)
    layout = _layout(modality, rng, realistic, instances, body)
    rows, cols = _image_size(modality, realistic)
    pixels = np.random.default_rng(rng.randint(0, 2**32))
    accession = f"{org.code.rsplit('.', 1)[-1]}{rng.randint(100000, 999999)}"
    missing = tuple(a for a in INCOMPLETE_ATTRIBUTES if a in set(incomplete))

    study = Dataset()
    study.SpecificCharacterSet = CHARSETS[charset]
    study.StudyInstanceUID = study_uid
    study.StudyDate = started.strftime("%Y%m%d")
    study.StudyTime = started.strftime("%H%M%S")
    study.AccessionNumber = accession
    study.StudyID = accession[-8:]
    study.StudyDescription = meaning[:64]
    study.ReferringPhysicianName = referring
    study.InstitutionName = org.name
    study.Manufacturer = {"CT": "SIEMENS", "MR": "Philips", "DX": "GE", "MG": "HOLOGIC", "US": "SAMSUNG"}[modality]
    study.StationName = org.ae_title
    study.Modality = modality
    study.BodyPartExamined = body
    study.PatientID = patient.patient_id
    study.IssuerOfPatientID = POLICY_ISSUER
    if "PatientName" not in missing:
        study.PatientName = patient.name
    if "PatientBirthDate" not in missing:
        study.PatientBirthDate = patient.birth_date
    if "PatientSex" not in missing:
        study.PatientSex = patient.sex
    if "PerformingPhysicianName" not in missing:
        study.PerformingPhysicianName = doctor_name
    if "PerformingPhysicianCode" not in missing:
        person = Dataset()
        person.CodeValue = doctor_code
        person.CodingSchemeDesignator = DOCTOR_SCHEME
        person.CodeMeaning = doctor_name.replace("^", " ")
        ident = Dataset()
        ident.PersonIdentificationCodeSequence = DicomSequence([person])
        ident.InstitutionName = org.name
        study.PerformingPhysicianIdentificationSequence = DicomSequence([ident])
    if not {"ProcedureCode", "ProcedureCodeMeaning"} <= set(missing):
        procedure = Dataset()
        if "ProcedureCode" not in missing:
            procedure.CodeValue = code
            procedure.CodingSchemeDesignator = PROCEDURE_SCHEME
        if "ProcedureCodeMeaning" not in missing:
            procedure.CodeMeaning = meaning[:64]
        study.ProcedureCodeSequence = DicomSequence([procedure])
    block = study.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(PATHOLOGY_ELEMENT, "CS", "Y" if pathology else "N")
    block.add_new(PRIORITY_ELEMENT, "CS", "EMERGENCY" if emergency else "ROUTINE")

    datasets: list[Dataset] = []
    for number, series in enumerate(layout, start=1):
        series_uid = _uid("series", study_uid, number)
        for index in range(series.count):
            ds = _instance(study, modality, series, number, index, rows, cols, pathology, pixels)
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = _uid("instance", series_uid, index)
            ds.ContentDate = study.StudyDate
            ds.ContentTime = (started + timedelta(minutes=number, seconds=index)).strftime("%H%M%S")
            datasets.append(_finish(ds, transfer_syntax))

    text = _FINDINGS[body] if pathology else _NORMAL
    written = (doctor_code, doctor_name, f"{meaning}. {text[0]}", text[1]) if report else None
    return SyntheticStudy(
        organisation=org,
        study_uid=study_uid,
        patient_id=patient.patient_id,
        patient_name=patient.name,
        modality=modality,
        instances=datasets,
        pathology=pathology,
        emergency=emergency,
        missing=missing,
        report=written,
        transfer_syntax=transfer_syntax,
        charset=charset,
        procedure=(code, meaning),
        study_date=study.StudyDate,
    )


def _instance(
    study: Dataset,
    modality: str,
    series: _Series,
    number: int,
    index: int,
    rows: int,
    cols: int,
    lesion: bool,
    rng: np.random.Generator,
) -> Dataset:
    ds = Dataset()
    ds.update(study)
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SeriesNumber = number
    ds.SeriesDescription = series.description
    ds.InstanceNumber = index + 1
    ds.PatientPosition = "HFS"
    count = max(series.count, 1)
    z = (index - (count - 1) / 2) / max(count / 2, 1)  # -1 .. 1 through the series
    if modality == "US":
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
        ds.PixelData = _ultrasound(rows, cols, lesion and index % 3 == 0, rng).tobytes()
        return ds
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if series.kind == "scout" else "AXIAL"]
        ds.Rows, ds.Columns = rows, cols
        ds.KVP = 120
        ds.SliceThickness = series.thickness
        ds.PixelSpacing = [round(380 / cols, 4)] * 2
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-190, -190, round(-index * series.thickness, 2)]
        ds.SliceLocation = round(-index * series.thickness, 2)
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = (-600, 1500) if study.BodyPartExamined == "CHEST" else (40, 400)
        if series.kind == "scout":
            image = _projection(rows, cols, False, 1, lesion, rng)
        else:
            image = _ct_slice(rows, cols, z, lesion, rng)
    elif modality == "MR":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.Rows, ds.Columns = rows, cols
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.MagneticFieldStrength = 1.5
        ds.EchoTime = {"t1": 12, "t2": 95, "flair": 120}[series.kind]
        ds.RepetitionTime = {"t1": 550, "t2": 4000, "flair": 9000}[series.kind]
        ds.SliceThickness = series.thickness
        ds.PixelSpacing = [round(230 / cols, 4)] * 2
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-115, -115, round(index * series.thickness, 2)]
        weighting = {"t1": 0, "t2": 1, "flair": 2}[series.kind]
        image = _mr_slice(rows, cols, z, weighting, lesion, rng)
    else:  # DX, MG: projection radiographs "for presentation"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.Rows, ds.Columns = rows, cols
        ds.ImagerPixelSpacing = [0.07, 0.07] if modality == "MG" else [0.15, 0.15]
        ds.PixelSpacing = ds.ImagerPixelSpacing
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
        ds.BurnedInAnnotation = "NO"
        ds.ViewPosition = series.view[-3:].strip("RL") or series.view
        if modality == "MG":
            ds.ImageLaterality = series.view[0]
            ds.Laterality = series.view[0]
            ds.PresentationLUTShape = "IDENTITY"
            ds.BreastImplantPresent = "NO"
            image = _projection(rows, cols, True, 1 if series.view[0] == "R" else -1, lesion, rng)
        else:
            image = _projection(rows, cols, False, 1, lesion and index == 0, rng)
    ds.PixelData = image.tobytes()
    return ds


def _finish(ds: Dataset, transfer_syntax: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if transfer_syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        plugin = "pydicom" if transfer_syntax == RLELossless else ""
        ds.compress(transfer_syntax, encoding_plugin=plugin, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


# -- the whole region ------------------------------------------------------------------------------
#: how often each modality is performed, relative (CT and radiographs dominate a region's volume)
_FREQUENCY = {"CT": 3, "MR": 2, "DX": 3, "MG": 1, "US": 2}
_INCOMPLETE_CHOICES: tuple[tuple[str, ...], ...] = (
    ("PerformingPhysicianCode",),
    ("ProcedureCode", "ProcedureCodeMeaning"),
    ("PerformingPhysicianCode", "PerformingPhysicianName"),
    ("PatientBirthDate",),
)


def synthetic_region(
    seed: int = 1, studies: int = 12, *, realistic: bool = False, organisations: int = 5
) -> list[SyntheticStudy]:
    """A mix of CT/MR/DX/MG/US studies from the region's organisations.

    About a quarter of the packages are incomplete (a doctor's or procedure code missing), a
    third carry detected pathology, one in six is an emergency, a few have no report yet; some
    patients were examined at two organisations. Transfer syntaxes vary per study."""
    rng = random.Random(f"region-studies-{seed}")
    orgs = region(seed, organisations)
    syntaxes = available_transfer_syntaxes()
    patients = [synthetic_patient(seed * 1000 + n) for n in range(max(1, studies * 3 // 4))]
    result: list[SyntheticStudy] = []
    for n in range(studies):
        if n < len(MODALITIES):  # every modality at least once, from an organisation that has it
            modality = MODALITIES[n]
            able = [o for o in orgs if modality in o.modalities]
            org = able[n % len(able)]
        else:
            org = orgs[n % len(orgs)]
            modality = rng.choices(org.modalities, [_FREQUENCY[m] for m in org.modalities])[0]
        incomplete = rng.choice(_INCOMPLETE_CHOICES) if n % 4 == 3 else ()
        result.append(
            synthetic_study(
                org,
                modality,
                seed=seed * 10_000 + n,
                transfer_syntax=syntaxes[n % len(syntaxes)],
                pathology=n % 3 == 0,
                emergency=n % 6 == 1,
                incomplete=incomplete,
                patient=patients[n % len(patients)],
                realistic=realistic,
                report=n % 5 != 4,
            )
        )
    return result


def available_transfer_syntaxes() -> list[str]:
    """Transfer syntaxes this interpreter can write (the compressed ones need their encoders)."""
    from pydicom.pixels.encoders.base import JPEG2000LosslessEncoder, JPEGLSLosslessEncoder

    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, DeflatedExplicitVRLittleEndian]
    if JPEGLSLosslessEncoder.is_available:
        syntaxes.append(JPEGLSLossless)
    if JPEG2000LosslessEncoder.is_available:
        syntaxes.append(JPEG2000Lossless)
    return [str(s) for s in syntaxes]


def part10_bytes(ds: Dataset) -> bytes:
    """The instance as a Part-10 file, in its own transfer syntax."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_study(study: SyntheticStudy, directory: Path) -> list[Path]:
    """Write the study's instances as Part-10 files: ``directory/<study>/<series>/<sop>.dcm``."""
    paths: list[Path] = []
    for ds in study.instances:
        path = directory / study.study_uid / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(part10_bytes(ds))
        paths.append(path)
    return paths
