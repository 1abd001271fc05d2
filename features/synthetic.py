"""A synthetic MIMIC-III generator with a planted, documented truth for the four benchmark tasks.

``generate(out_dir, patients=N, seed=S)`` writes PATIENTS, ADMISSIONS, ICUSTAYS, TRANSFERS,
CHARTEVENTS, LABEVENTS, OUTPUTEVENTS, D_ITEMS, D_LABITEMS, DIAGNOSES_ICD and D_ICD_DIAGNOSES
as CSV files in MIMIC-III v1.4's layout (UPPERCASE quoted headers, quoted text and
timestamps, the real item ids of CareVue and MetaVision), plus ``synthetic_truth.csv`` with
the planted truth of every ICU stay and ``synthetic_truth_hourly.csv`` with the planted
24-hour death risk at every decompensation sample hour (see "Planted truth of the four
tasks" below). Event rows are generated and written a batch of patients at a time, so tens
of millions of chart rows need little memory. The same seed gives the same bytes.

Planted risk model
------------------
Each ICU stay has a severity ``s ~ N(0, 1)`` and, for seven variables ``k``, a standardised
level ``z_k = 0.6 s + 0.8 e_k`` (``e_k ~ N(0, 1)``), oriented so that larger is worse. The
stay's measurements sit around fixed levels derived from ``z``:

==============  =====================  =================  ===========
variable        level                  hourly noise (sd)  coefficient
==============  =====================  =================  ===========
heart rate      88 + 14 z  (bpm)       4                  0.5
mean BP         78 - 10 z  (mmHg)      4                  0.5
resp. rate      19 + 4 z   (/min)      1.5                0.4
SpO2            97 - 1.6 z (%, <=100)  0.8                0.4
temperature     37.0 + 0.6 z (C)       0.15               0.2
glucose         135 + 35 z (mg/dL)     12                 0.2
pH              7.39 - 0.05 z          0.015              0.4
==============  =====================  =================  ===========

``true_risk = sigmoid(-2.9 + sum_k coefficient_k * z_k)``; in-hospital death is drawn as
``Bernoulli(true_risk)``. The base mortality is about 12% and the planted risk's own AUROC is
about 0.85. Every level is measured many times in the first 48 hours (vitals hourly,
temperature every 4 h, glucose and pH every 6-8 h), so the risk is recoverable from the
48-hour grid. GCS follows the severity (``15 - 2.5 max(s, 0)`` plus noise) but has no
coefficient of its own. Age, sex and everything else carry no risk.

Planted truth of the four tasks
-------------------------------
The four mimic3-benchmarks tasks each have a planted reference. Times are hours since the
stay's INTIME; ``s`` is the stay's severity.

*In-hospital mortality* is as above: the admission's death is ``Bernoulli(true_risk)``
(drawn for its first stay) and nothing else decides it.

*Where and when a death happens.* A death is in the ICU for 70% (:data:`P_ICU_DEATH`) of the
deaths of one-ICU-stay admissions whose stay is long and leaves room for the whole terminal
course after the first 48 h: the deterioration lasts ``W ~ U(24, 72)`` h and starts at the
onset ``o = LOS - W``, kept only where ``o >= 48.5`` h; death is at OUTTIME (DEATHTIME =
OUTTIME = DISCHTIME). From the onset, heart rate, mean BP, respiratory rate, SpO2 and pH
drift towards worse by 2 sd of ``z`` times ``min((t - o) / 48, 1)``, temperature by 0.5 sd,
GCS total by 5 points times the same ramp (glucose does not drift); at the full ramp heart
rate is 28 bpm higher and mean BP 20 mmHg lower. Every other death is 24.5-72 h after the
admission's last ICU discharge, with no sign in the values. So the first 48 h (the
mortality task's input) never show a terminal course, and no decompensation sample is
within 24 h of a death without one.

*Length of stay.* A first stay is long (85%) or short (``U(6, 47)`` h, unrelated to
severity). A long one lasts ``48.5 + E * los_scale(s)`` h, ``E ~ Exp(1)``,
``los_scale(s) = 60 exp(0.5 s - 0.125)`` (mean 60 h at ``s ~ N(0, 1)``), whether or not the
patient dies in it. Second ICU stays last ``U(20, 120)`` h.

*Decompensation.* Given the onset and ``s``, ``W`` has density proportional to
``exp(-w / los_scale(s))`` on [24, 72] (the uniform ``W`` tilted by the exponential LOS it
was selected with). At an hour ``t = o + a`` the patient is alive, so ``W > a``, and
``true_decomp_risk = P(W < a + 24 | W > a)`` (:func:`decompensation_risk`). Before the onset,
and in every stay without one, it is exactly 0: a death within 24 h always has its onset
24 h or more before it. It is the risk given the planted state the history reveals (the
drift shows the onset and its age, the levels the severity), an upper reference a model
of the noisy values approaches; the label is 1 exactly when ``true_death_hour - t < 24``.

*Phenotypes.* Three more per-stay latents ``~ N(0, 1)`` shift one variable each (they have
no mortality coefficient): ``neuro`` lowers GCS total by ``2 max(neuro, 0)``; ``metabolic``
sets weight ``80 + 18 (0.7 metabolic + 0.71 e)`` kg; ``respiratory`` gives mechanical
ventilation (FiO2 charted every 4 h) with probability ``sigmoid(-0.7 + 1.5 respiratory)``.
Phenotype ``k`` (phenotypes.json order) is present in the admission with probability
``true_pheno_k = sigmoid(b_k + sum_j w_kj x_j)`` over the first stay's ``s``, ``z`` and
latents (:data:`PHENOTYPE_MODEL`: shock, respiratory failure and cerebrovascular disease
are easy, AUROC of the planted probability about 0.87; four labels have no inputs and
AUROC 0.5). A present phenotype writes one of its codes (uniformly chosen), and every
admission gets 1-5 distinct codes outside the 25 (:data:`FILLER_ICD9`), in random order;
2% of admissions have no diagnosis row at all (the benchmark skips them; the drawn labels
are then not written). D_ICD_DIAGNOSES lists every code of the 25 phenotypes (titled with
the phenotype's name; the project's table has no per-code titles) and the fillers.

``synthetic_truth.csv`` holds, per ICU stay: ``subject_id``, ``hadm_id``, ``icustay_id``,
``true_risk``, ``died`` (the admission's in-hospital death), then :data:`TASK_COLUMNS`:
``true_los_hours`` (OUTTIME - INTIME, exact), ``los_scale_hours`` (``los_scale(s)`` of a
long first stay, else empty), ``true_death_hour`` (DEATHTIME - INTIME, empty if the
admission survives; larger than ``true_los_hours`` for a death outside the ICU),
``onset_hour`` (the deterioration's onset, empty unless the patient dies in this stay) and
``true_pheno_0`` ... ``true_pheno_24`` (the admission's planted probabilities).
``synthetic_truth_hourly.csv`` holds ``icustay_id``, ``hour``, ``true_decomp_risk`` for every
stay and every integer ``hour`` with ``5 <= hour <= min(LOS, hours to DEATHTIME) + 1e-6``
(LOS as ICUSTAYS.LOS, days to 4 decimals, times 24): the benchmark's decompensation and
length-of-stay sample hours (every stay has charted events, temperature among them, in
its first hour or two, so the benchmark's "after the first event" never removes one).
The length-of-stay target at a sample hour is ``LOS - hour``, from ICUSTAYS itself.

Realism for the extraction pipeline: half the patients are CareVue (item ids < 220000) and
half MetaVision; about 7% of ICU stays have a ward transfer, 8% of admissions have two ICU
stays, 3% of patients are minors and 5% are over 89 (date of birth shifted 300 years back);
about 85% of first ICU stays last 48 h or more; 8% of hourly vitals are missing, 1% of
rows have an empty value, some chart rows lack ICUSTAY_ID, some labs lack HADM_ID or fall
before ICU admission, and most chart rows belong to items outside the 17 variables.

Shifts
------
``generate(..., shift=NAME)`` writes a cohort that departs from the base in one documented
way, for measuring how models and their uncertainty behave under shift (each shift, what
it changes, what it keeps and why it is realistic: :mod:`features.shifts`):

- ``second-site``: the same patients charted by another hospital: vitals every ~3 h, labs
  and glucose every 12 h, mean BP never charted, temperature in Fahrenheit (converted by
  the extraction), lab pH 0.04 lower (venous gases; not removed by the extraction);
- ``older-sicker``: severity mean +1.5 sd, adults 75-89; the planted formula unchanged;
- ``mechanism``: the same patients and measurements, glucose coefficient 0.2 -> 1.0 and
  heart rate 0.5 -> 0.0.

A shift is a frozen :class:`features.shifts.Shift` (a custom one may be passed too);
everything it does not name is as in the base. With ``shift=None`` nothing of the shift
machinery is written (the bytes are pinned by a test). A shifted cohort's
``synthetic_truth.csv`` keeps its columns and gains ``shift`` (the name), ``base_risk``
(the base formula on the same levels: what a perfect model of the base cohort predicts),
``severity``, the levels ``z_hr`` ... ``z_ph`` and the phenotype latents
``latent_neuro``, ``latent_metabolic``, ``latent_respiratory``; ``true_risk`` is always
the risk the outcome was drawn from. Under ``mechanism`` the terminal course follows the
shifted outcome: a stay whose death moves into or out of the ICU changes its values after
the onset (always after 48 h) and its DEATHTIME, nothing else. ``synthetic_shift.json``
records the shift's fields, the resolved risk model, the item ids never charted and which
changes the extraction removes.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from features.io import PRIVATE_FILE_MODE, OutputFolder, create_private_file
from features.shifts import BASE, SHIFT_NAMES, SHIFTS, Shift, ShiftName, resolve_shift

# The public names; the shift ones are re-exported so that one import serves a benchmark.
__all__ = [
    "BASE",
    "COEFFICIENTS",
    "DATABASE_FILES",
    "DETERIORATION",
    "INTERCEPT",
    "LEVELS",
    "PHENOTYPES",
    "PHENOTYPE_COLUMNS",
    "PHENOTYPE_MODEL",
    "RISK_VARIABLES",
    "SHIFTS",
    "SHIFT_FILE",
    "SHIFT_NAMES",
    "TASK_COLUMNS",
    "TRUTH_FILE",
    "TRUTH_HOURLY_FILE",
    "Shift",
    "ShiftName",
    "decompensation_risk",
    "generate",
    "los_scale",
    "phenotype_probabilities",
    "planted_risk",
    "resolve_shift",
    "shift_coefficients",
    "shift_intercept",
    "shift_record",
    "sigmoid",
]

INTERCEPT = -2.9
RISK_VARIABLES = ("hr", "map", "rr", "spo2", "temp", "glucose", "ph")
COEFFICIENTS = {
    "hr": 0.5,
    "map": 0.5,
    "rr": 0.4,
    "spo2": 0.4,
    "temp": 0.2,
    "glucose": 0.2,
    "ph": 0.4,
}
# (centre, scale of z, hourly measurement noise sd); the sign makes larger z worse.
LEVELS = {
    "hr": (88.0, 14.0, 4.0),
    "map": (78.0, -10.0, 4.0),
    "rr": (19.0, 4.0, 1.5),
    "spo2": (97.0, -1.6, 0.8),
    "temp": (37.0, 0.6, 0.15),
    "glucose": (135.0, 35.0, 12.0),
    "ph": (7.39, -0.05, 0.015),
}
SEVERITY_LOADING = 0.6

# Length of stay: a long first stay lasts LONG_STAY_MIN_H + E * los_scale(s) hours, E ~ Exp(1),
# los_scale(s) = LOS_SCALE_H * exp(LOS_SEVERITY * s - LOS_SEVERITY**2 / 2) (mean LOS_SCALE_H
# over s ~ N(0, 1)); a short one U(SHORT_STAY_H), unrelated to severity.
LONG_STAY_MIN_H = 48.5
SHORT_STAY_H = (6.0, 47.0)
LOS_SCALE_H = 60.0
LOS_SEVERITY = 0.5
# Death in the ICU: for a death that happens in the unit the deterioration starts at an onset
# hour o, and death follows W hours later (W ~ U(DETERIORATION_WINDOW_H)); values drift
# towards worse by DETERIORATION[k] * min((t - o) / DETERIORATION_RAMP_H, 1) sd of z.
P_ICU_DEATH = 0.7
DETERIORATION_WINDOW_H = (24.0, 72.0)
DETERIORATION_RAMP_H = 48.0
DETERIORATION = {
    "hr": 2.0,
    "map": 2.0,
    "rr": 2.0,
    "spo2": 2.0,
    "temp": 0.5,
    "glucose": 0.0,
    "ph": 2.0,
}
GCS_DETERIORATION = 5.0
# A death outside the ICU comes this many hours after the admission's last ICU discharge.
POST_ICU_DEATH_H = (24.5, 72.0)
DECOMPENSATION_HORIZON_H = 24.0
#: First sample hour of decompensation and length of stay (the benchmark's t > 4 h).
FIRST_SAMPLE_HOUR = 5

# Phenotypes: three per-stay latent factors N(0, 1) besides severity and the levels z.
# neuro lowers GCS, metabolic raises weight, respiratory makes mechanical ventilation
# (FiO2 charted every 4 h) likelier.
PHENOTYPE_LATENTS = ("neuro", "metabolic", "respiratory")
NEURO_GCS = 2.0  # GCS total - NEURO_GCS * max(neuro, 0)
METABOLIC_WEIGHT = 0.7  # weight = 80 + 18 (0.7 metabolic + sqrt(1 - 0.49) e)
RESPIRATORY_VENTILATION = (-0.7, 1.5)  # P(ventilated) = sigmoid(-0.7 + 1.5 respiratory)
# Found through the package, so that a copy of this module elsewhere (the byte-for-byte
# reference test runs an older commit's copy) reads the same table.
PHENOTYPE_FILE = importlib.resources.files("features.mimic") / "phenotypes.json"
#: Planted phenotype model, one entry per phenotype of phenotypes.json in its order:
#: (intercept, {input: coefficient}) with inputs severity ``s``, the levels ``z_<variable>``
#: and the latents; P(label k) = sigmoid(intercept + sum coefficient * input).
PHENOTYPE_MODEL: tuple[tuple[float, dict[str, float]], ...] = (
    (-1.7, {"z_ph": 0.8, "z_map": 0.5, "s": 0.3}),  # acute renal failure
    (-2.4, {"neuro": 2.0}),  # acute cerebrovascular disease: easy (GCS)
    (-2.3, {"z_hr": 0.4, "z_map": 0.4}),  # acute myocardial infarction
    (-1.0, {"z_hr": 1.2}),  # cardiac dysrhythmias
    (-2.0, {"metabolic": 0.5}),  # chronic kidney disease: hard
    (-1.9, {"z_spo2": 0.6, "z_rr": 0.4}),  # COPD
    (-1.5, {}),  # complications of care: nothing to learn
    (-2.4, {"z_hr": -0.5}),  # conduction disorders: hard
    (-1.3, {"z_map": 0.5, "z_spo2": 0.4, "metabolic": 0.3}),  # CHF
    (-1.1, {"metabolic": 0.6}),  # coronary atherosclerosis
    (-2.3, {"z_glucose": 1.5, "metabolic": 0.8}),  # diabetes with complications
    (-1.7, {"z_glucose": 1.5, "metabolic": 0.8}),  # diabetes without complication
    (-1.2, {"metabolic": 1.0}),  # lipid metabolism
    (-0.6, {"z_map": -0.8, "metabolic": 0.5}),  # essential hypertension (higher MAP)
    (-1.1, {"z_ph": 0.6, "s": 0.3}),  # fluid and electrolyte disorders
    (-2.2, {"z_map": 0.6, "z_hr": 0.4}),  # gastrointestinal hemorrhage
    (-1.9, {"z_map": -0.6}),  # hypertension with complications
    (-2.0, {}),  # other liver diseases: nothing to learn
    (-2.6, {}),  # other lower respiratory disease: nothing to learn
    (-3.0, {}),  # other upper respiratory disease: nothing to learn
    (-2.2, {"respiratory": 0.6}),  # pleurisy, pneumothorax
    (-1.6, {"z_temp": 1.0, "respiratory": 0.8}),  # pneumonia
    (-1.8, {"respiratory": 2.0, "z_spo2": 0.8}),  # respiratory failure: easy
    (-2.1, {"z_temp": 1.2, "z_hr": 0.5, "z_map": 0.5}),  # septicemia
    (-2.8, {"z_map": 2.0, "s": 0.5}),  # shock: easy
)
#: Diagnoses outside the 25 phenotypes, 1-5 per admission (with their MIMIC-III titles).
FILLER_ICD9 = {
    "2449": ("Hypothyroidism NOS", "Unspecified acquired hypothyroidism"),
    "3051": ("Tobacco use disorder", "Tobacco use disorder"),
    "311": ("Depressive disorder NEC", "Depressive disorder, not elsewhere classified"),
    "V5861": ("Long-term use anticoagul", "Long-term (current) use of anticoagulants"),
    "V1582": ("History of tobacco use", "Personal history of tobacco use"),
    "2809": ("Iron defic anemia NOS", "Iron deficiency anemia, unspecified"),
    "V5867": ("Long-term use of insulin", "Long-term (current) use of insulin"),
    "2875": ("Thrombocytopenia NOS", "Thrombocytopenia, unspecified"),
    "53081": ("Esophageal reflux", "Esophageal reflux"),
    "5990": ("Urin tract infection NOS", "Urinary tract infection, site not specified"),
    "2859": ("Anemia NOS", "Anemia, unspecified"),
}

# Item ids per source system: CareVue (cv) and MetaVision (mv).
ITEMS = {
    "hr": {"cv": 211, "mv": 220045},
    "sbp": {"cv": 455, "mv": 220179},
    "dbp": {"cv": 8441, "mv": 220180},
    "map": {"cv": 456, "mv": 220181},
    "rr": {"cv": 618, "mv": 220210},
    "spo2": {"cv": 646, "mv": 220277},
    "temp": {"cv": 678, "mv": 223762},
    "fio2": {"cv": 3420, "mv": 223835},
    "glucose_chart": {"cv": 807, "mv": 225664},
    "gcs_eye": {"cv": 184, "mv": 220739},
    "gcs_motor": {"cv": 454, "mv": 223901},
    "gcs_verbal": {"cv": 723, "mv": 223900},
    "weight": {"cv": 763, "mv": 226512},
    "height": {"cv": 1394, "mv": 226730},
}
GCS_TOTAL_CV = 198
# MetaVision's Fahrenheit temperature item, used only by a shift that charts Fahrenheit.
TEMP_FAHRENHEIT_MV = 223761
CRR_CV = 115
# Chart items outside the 17 variables, recorded hourly (text and numbers), per system.
OTHER_CHART = {
    "cv": [
        (212, "Heart Rhythm", "text"),
        (161, "Ectopy Type", "text"),
        (31, "Activity", "text"),
        (1125, "Skin Care", "text"),
        (5815, "HR Alarm [Low]", "num"),
        (5820, "HR Alarm [High]", "num"),
        (8549, "O2 Sat Alarm [Low]", "num"),
        (550, "Precautions", "text"),
    ],
    "mv": [
        (220048, "Heart Rhythm", "text"),
        (224650, "Ectopy Type 1", "text"),
        (224084, "Activity", "text"),
        (224641, "Alarms On", "text"),
        (220046, "Heart rate Alarm - High", "num"),
        (220047, "Heart Rate Alarm - Low", "num"),
        (223769, "O2 Saturation Pulseoxymetry Alarm - High", "num"),
        (224082, "Turn", "text"),
    ],
}
OTHER_TEXT = ["SR (Sinus Rhythm)", "None", "Bedrest", "Done", "Yes", "ST (Sinus Tachycardia)"]
LAB_ITEMS = {
    50931: ("GLUCOSE", "Blood", "Chemistry", "mg/dL"),
    50820: ("PH", "Blood", "Blood Gas", "units"),
    50912: ("CREATININE", "Blood", "Chemistry", "mg/dL"),
    50971: ("POTASSIUM", "Blood", "Chemistry", "mEq/L"),
    50983: ("SODIUM", "Blood", "Chemistry", "mEq/L"),
    51221: ("HEMATOCRIT", "Blood", "Hematology", "%"),
}
OUTPUT_ITEMS = {"cv": (40055, "Urine Out Foley"), "mv": (226559, "Foley")}
CHART_LABELS = {
    211: "Heart Rate",
    220045: "Heart Rate",
    455: "NBP [Systolic]",
    220179: "Non Invasive Blood Pressure systolic",
    8441: "NBP [Diastolic]",
    220180: "Non Invasive Blood Pressure diastolic",
    456: "NBP Mean",
    220181: "Non Invasive Blood Pressure mean",
    618: "Respiratory Rate",
    220210: "Respiratory Rate",
    646: "SpO2",
    220277: "O2 saturation pulseoxymetry",
    678: "Temperature F",
    223762: "Temperature Celsius",
    3420: "FIO2",
    223835: "Inspired O2 Fraction",
    807: "Fingerstick Glucose",
    225664: "Glucose finger stick",
    184: "Eye Opening",
    220739: "GCS - Eye Opening",
    454: "Motor Response",
    223901: "GCS - Motor Response",
    723: "Verbal Response",
    223900: "GCS - Verbal Response",
    763: "Daily Weight",
    226512: "Admission Weight (Kg)",
    1394: "Height Inches",
    226730: "Height (cm)",
    198: "GCS Total",
    115: "Capillary Refill [Right]",
}
UNITS = {
    "hr": {"cv": None, "mv": "bpm"},
    "sbp": {"cv": None, "mv": "mmHg"},
    "dbp": {"cv": None, "mv": "mmHg"},
    "map": {"cv": None, "mv": "mmHg"},
    "rr": {"cv": None, "mv": "insp/min"},
    "spo2": {"cv": None, "mv": "%"},
    "temp": {"cv": "Deg. F", "mv": "?C"},
    "temp_f": {"cv": "Deg. F", "mv": "?F"},
    "fio2": {"cv": None, "mv": None},
    "glucose_chart": {"cv": None, "mv": None},
    "weight": {"cv": None, "mv": "kg"},
    "height": {"cv": None, "mv": "cm"},
}
GCS_TEXT = {
    "cv": {
        "gcs_eye": ["1 No Response", "2 To pain", "3 To speech", "4 Spontaneously"],
        "gcs_motor": [
            "1 No Response",
            "2 Abnorm extensn",
            "3 Abnorm flexion",
            "4 Flex-withdraws",
            "5 Localizes Pain",
            "6 Obeys Commands",
        ],
        "gcs_verbal": [
            "1 No Response",
            "2 Incomp sounds",
            "3 Inapprop words",
            "4 Confused",
            "5 Oriented",
        ],
    },
    "mv": {
        "gcs_eye": ["None", "To Pain", "To Speech", "Spontaneously"],
        "gcs_motor": [
            "No response",
            "Abnormal extension",
            "Abnormal Flexion",
            "Flex-withdraws",
            "Localizes Pain",
            "Obeys Commands",
        ],
        "gcs_verbal": [
            "No Response",
            "Incomprehensible sounds",
            "Inappropriate Words",
            "Confused",
            "Oriented",
        ],
    },
}
CAREUNITS = ["MICU", "SICU", "CCU", "CSRU", "TSICU"]
EPOCH = np.datetime64("2100-01-01T00:00:00", "s")

CHART_COLUMNS = [
    "ROW_ID",
    "SUBJECT_ID",
    "HADM_ID",
    "ICUSTAY_ID",
    "ITEMID",
    "CHARTTIME",
    "STORETIME",
    "CGID",
    "VALUE",
    "VALUENUM",
    "VALUEUOM",
    "WARNING",
    "ERROR",
    "RESULTSTATUS",
    "STOPPED",
]
LAB_COLUMNS = [
    "ROW_ID",
    "SUBJECT_ID",
    "HADM_ID",
    "ITEMID",
    "CHARTTIME",
    "VALUE",
    "VALUENUM",
    "VALUEUOM",
    "FLAG",
]
OUTPUT_COLUMNS = [
    "ROW_ID",
    "SUBJECT_ID",
    "HADM_ID",
    "ICUSTAY_ID",
    "CHARTTIME",
    "ITEMID",
    "VALUE",
    "VALUEUOM",
    "STORETIME",
    "CGID",
    "STOPPED",
    "NEWBOTTLE",
    "ISERROR",
]


TRUTH_FILE = "synthetic_truth.csv"
#: The planted 24-hour death risk at every decompensation sample hour.
TRUTH_HOURLY_FILE = "synthetic_truth_hourly.csv"
#: The shift's parameters, written only for a shifted cohort.
SHIFT_FILE = "synthetic_shift.json"
#: Every file the generator writes; a folder holding exactly (a subset of) these and the
#: truth file is one of ours and may be replaced.
DATABASE_FILES = frozenset(
    {
        f"{name}.csv"
        for name in (
            "PATIENTS",
            "ADMISSIONS",
            "ICUSTAYS",
            "TRANSFERS",
            "DIAGNOSES_ICD",
            "CHARTEVENTS",
            "LABEVENTS",
            "OUTPUTEVENTS",
            "D_ITEMS",
            "D_LABITEMS",
            "D_ICD_DIAGNOSES",
        )
    }
    | {TRUTH_FILE, TRUTH_HOURLY_FILE, SHIFT_FILE}
)


def _load_phenotypes() -> tuple[tuple[str, tuple[str, ...]], ...]:
    table = json.loads(PHENOTYPE_FILE.read_text())
    return tuple((entry["name"], tuple(entry["codes"])) for entry in table["phenotypes"])


#: (name, ICD-9 codes) of the 25 benchmark phenotypes, in phenotypes.json's (label) order.
PHENOTYPES = _load_phenotypes()
#: The truth file's column of each phenotype's planted probability, in label order.
PHENOTYPE_COLUMNS = tuple(f"true_pheno_{k}" for k in range(len(PHENOTYPES)))
#: Per-stay truth columns every cohort's truth file holds after the first five.
TASK_COLUMNS = (
    "true_los_hours",
    "los_scale_hours",
    "true_death_hour",
    "onset_hour",
    *PHENOTYPE_COLUMNS,
)
_PHENOTYPE_CODES = np.array([code for _, codes in PHENOTYPES for code in codes])
_PHENOTYPE_LENGTHS = np.array([len(codes) for _, codes in PHENOTYPES])
_PHENOTYPE_OFFSETS = np.cumsum(_PHENOTYPE_LENGTHS) - _PHENOTYPE_LENGTHS
_FILLER_CODES = np.array(sorted(FILLER_ICD9))
assert len(PHENOTYPE_MODEL) == len(PHENOTYPES)
assert len(set(_PHENOTYPE_CODES)) == len(_PHENOTYPE_CODES)  # no code in two phenotypes
assert not set(FILLER_ICD9) & set(_PHENOTYPE_CODES)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def los_scale(severity: np.ndarray) -> np.ndarray:
    """The planted mean of a long first stay's LOS beyond LONG_STAY_MIN_H, in hours."""
    return LOS_SCALE_H * np.exp(LOS_SEVERITY * severity - LOS_SEVERITY**2 / 2)


def phenotype_probabilities(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The planted probability of each phenotype label, shape (stays, 25).

    Args:
        inputs: Per-stay arrays ``s``, ``z_<variable>`` and the :data:`PHENOTYPE_LATENTS`
            (only those the model names are read).
    """
    n = len(inputs["s"])
    logits = np.empty((n, len(PHENOTYPE_MODEL)))
    for k, (intercept, weights) in enumerate(PHENOTYPE_MODEL):
        logits[:, k] = intercept
        for name, weight in weights.items():
            logits[:, k] += weight * inputs[name]
    return sigmoid(logits)


def decompensation_risk(hours_since_onset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """P(death within 24 h) at hours ``a`` after the onset of a fatal deterioration.

    Given the onset ``o`` (an ICU death's stay), death comes ``W`` hours after it, and
    ``W | o`` is ``W ~ U(24, 72)`` tilted by the stay's exponential LOS: density
    proportional to ``exp(-w / scale)`` on [24, 72] (``scale`` = :func:`los_scale` of the
    severity). Alive at ``o + a`` means ``W > a``, so the risk is
    ``P(W < a + 24 | W > a)``. Before the onset (``a < 0``, NaN or no onset) the risk is
    exactly 0: every death in the next 24 h has its onset at least 24 h before it.
    """
    a = np.asarray(hours_since_onset, dtype=np.float64)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), a.shape)
    low_w, high_w = DETERIORATION_WINDOW_H
    with np.errstate(invalid="ignore"):
        started = a >= 0
    a = np.where(started, a, 0.0)
    lo = np.maximum(low_w, a)
    hi = np.minimum(a + DECOMPENSATION_HORIZON_H, high_w)
    num = -np.expm1(-np.maximum(hi - lo, 0.0) / scale)
    den = -np.expm1(-np.maximum(high_w - lo, 0.0) / scale)
    with np.errstate(invalid="ignore", divide="ignore"):
        risk = np.where(den > 1e-12, num / np.where(den > 1e-12, den, 1.0), 1.0)
    return np.where(started, np.clip(risk, 0.0, 1.0), 0.0)


def planted_risk(
    z: dict[str, np.ndarray],
    coefficients: dict[str, float] | None = None,
    intercept: float = INTERCEPT,
) -> np.ndarray:
    """The planted in-hospital death probability from standardised levels ``z``.

    Args:
        z: Standardised level of each of :data:`RISK_VARIABLES`.
        coefficients: Coefficient of each variable; None gives the base
            :data:`COEFFICIENTS`.
        intercept: Intercept of the logit.

    Returns:
        ``sigmoid(intercept + sum_k coefficients[k] * z[k])``.
    """
    coefficients = COEFFICIENTS if coefficients is None else coefficients
    logit = np.full_like(z[RISK_VARIABLES[0]], intercept, dtype=np.float64)
    for name in RISK_VARIABLES:
        logit = logit + coefficients[name] * z[name]
    return sigmoid(logit)


def shift_coefficients(spec: Shift) -> dict[str, float]:
    """The planted coefficients under ``spec``: the base ones with its overrides."""
    return {**COEFFICIENTS, **dict(spec.coefficients)}


def shift_intercept(spec: Shift) -> float:
    """The planted intercept under ``spec``."""
    return INTERCEPT if spec.intercept is None else spec.intercept


def shift_record(spec: Shift) -> dict[str, object]:
    """What ``synthetic_shift.json`` holds for ``spec``: its fields and what they mean.

    Besides the fields of :class:`Shift`, the record spells out the resolved risk model
    (every coefficient, the intercept), the item ids that are never charted, and which
    changes the extraction undoes (a unit it converts) and which it cannot (an offset).
    """
    record = spec.as_dict()
    record["risk_model"] = {
        "intercept": shift_intercept(spec),
        "coefficients": shift_coefficients(spec),
        "base_intercept": INTERCEPT,
        "base_coefficients": dict(COEFFICIENTS),
    }
    record["never_charted_itemids"] = sorted(
        itemid for key in spec.never_charted for itemid in ITEMS[key].values()
    )
    # For each field that changes the charting: whether features.mimic.extract undoes it.
    record["removed_by_extraction"] = {
        "temperature_fahrenheit": True,  # values >= 79 are converted to Celsius
        "ph_offset": False,  # same item, same unit: nothing marks the value as shifted
        "never_charted": False,  # the grid holds the normal value, its mask stays 0
        "charting_intervals": False,  # fewer observed hours, more forward fill
    }
    return record


def _check_shift(spec: Shift) -> None:
    """Refuse a custom shift the generator cannot honour, in one line."""
    unknown = sorted({name for name, _ in spec.coefficients} - set(RISK_VARIABLES))
    if unknown:
        raise ValueError(
            f"shift {spec.name!r}: coefficients name unknown variables {unknown}; "
            f"known: {list(RISK_VARIABLES)}"
        )
    unknown = sorted(set(spec.never_charted) - set(ITEMS))
    if unknown:
        raise ValueError(
            f"shift {spec.name!r}: never_charted names unknown chart items {unknown}; "
            f"known: {sorted(ITEMS)}"
        )
    intervals = {
        "vitals_every_h": spec.vitals_every_h,
        "labs_every_h": spec.labs_every_h,
        "glucose_every_h": spec.glucose_every_h,
    }
    for field, value in intervals.items():
        if not value > 0:
            raise ValueError(f"shift {spec.name!r}: {field} must be > 0, got {value}")


@dataclass
class _Stays:
    """Per-ICU-stay arrays of one batch of patients."""

    subject: np.ndarray
    hadm: np.ndarray
    icustay: np.ndarray
    metavision: np.ndarray
    intime: np.ndarray  # seconds since EPOCH
    outtime: np.ndarray
    z: dict[str, np.ndarray]
    severity: np.ndarray
    arterial: np.ndarray
    ventilated: np.ndarray
    weight: np.ndarray
    height: np.ndarray
    onset: np.ndarray  # hours since INTIME of a fatal deterioration's onset; NaN if none
    neuro: np.ndarray


class _Writer:
    """Appends polars frames to one CSV file, header once, MIMIC-style quoting."""

    def __init__(self, path: Path, columns: list[str], *, mimic_style: bool = True) -> None:
        self.path = path
        self.columns = columns
        # The truth files are plain CSV (bare header, no ROW_ID), like synthetic_truth.csv.
        self.mimic_style = mimic_style
        # Owner-only (0600): the tables look like patient data and are treated as such.
        self.handle = os.fdopen(
            os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE), "wb"
        )
        self.rows = 0
        quote = '"' if mimic_style else ""
        header = ",".join(f"{quote}{c}{quote}" for c in columns) + "\n"
        self.handle.write(header.encode())

    def write(self, frame: pl.DataFrame) -> None:
        if not self.mimic_style:
            frame.select(self.columns).write_csv(self.handle, include_header=False)
            self.rows += frame.height
            return
        frame = frame.with_columns(
            pl.int_range(self.rows + 1, self.rows + 1 + frame.height, dtype=pl.Int64).alias(
                "ROW_ID"
            )
        )
        frame.select(self.columns).write_csv(
            self.handle,
            include_header=False,
            quote_style="non_numeric",
            datetime_format="%Y-%m-%d %H:%M:%S",
            float_precision=None,
        )
        self.rows += frame.height

    def close(self) -> None:
        self.handle.close()


_HOURLY_COLUMNS = ("icustay_id", "hour", "true_decomp_risk")


def _icd_dictionary(folder: Path) -> None:
    """D_ICD_DIAGNOSES: every code the generator can write (the benchmark inner-joins it).

    The 25 phenotypes' codes carry their phenotype's name as a synthetic title (the
    project's table has no per-code titles); the filler codes their MIMIC-III titles.
    """
    rows = []
    for name, codes in PHENOTYPES:
        for code in codes:
            rows.append((code, name[:24], f"{name} (synthetic title, ICD-9 {code})"))
    rows.extend((code, short, long) for code, (short, long) in sorted(FILLER_ICD9.items()))
    frame = pl.DataFrame(
        {
            "ROW_ID": np.arange(1, len(rows) + 1),
            "ICD9_CODE": [r[0] for r in rows],
            "SHORT_TITLE": [r[1] for r in rows],
            "LONG_TITLE": [r[2] for r in rows],
        }
    )
    with create_private_file(folder / "D_ICD_DIAGNOSES.csv") as handle:
        frame.write_csv(handle, quote_style="non_numeric")


def _times(seconds: np.ndarray) -> pl.Series:
    return pl.Series((EPOCH + seconds.astype("timedelta64[s]")).astype("datetime64[us]"))


def generate(
    out_dir: str | Path,
    *,
    patients: int,
    seed: int = 0,
    batch_patients: int = 1000,
    shift: ShiftName | Shift | None = None,
) -> dict:
    """Write a synthetic MIMIC-III database and the planted risk of each ICU stay.

    Args:
        out_dir: Folder to write: a new path, an empty folder (filled in place, its mode
            kept), or a database of this generator holding nothing else (replaced
            atomically); any other non-empty folder is refused. It is created owner-only
            (0700, files 0600, missing parents 0700), as real patient data would be.
        patients: Number of patients.
        seed: Seed; the same seed and arguments give identical files.
        batch_patients: Patients generated and written at a time (bounds memory).
        shift: None for the base cohort (the files are exactly those of earlier versions),
            or a named shift (``"second-site"``, ``"older-sicker"``, ``"mechanism"``; see
            the module docstring) or a custom :class:`Shift`. A shifted cohort's truth file
            gains the columns ``shift``, ``base_risk``, ``severity`` and ``z_<variable>``,
            and ``synthetic_shift.json`` records the shift's parameters.

    Returns:
        A summary: patients, admissions, ICU stays, row counts per table, deaths, deaths
        in the ICU, hourly truth rows (decompensation samples), the mean planted risk and
        the shift's name (None for the base cohort).

    Raises:
        ValueError: If ``patients`` < 1 or ``shift`` is unknown or cannot be honoured;
            :class:`features.io.OutputFolderError` (a ValueError) if ``out_dir`` is
            refused or cannot be written.
    """
    if patients < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    spec = resolve_shift(shift)
    _check_shift(spec)
    output = OutputFolder(
        Path(out_dir),
        is_ours=_is_synthetic_database,
        what="a synthetic database written by rank1 synth",
        marker=TRUTH_FILE,
    )
    with output.writing() as tmp:
        summary = _generate_into(tmp, patients, seed, batch_patients, spec, shift is not None)
    return summary


def _is_synthetic_database(folder: Path) -> bool:
    """Whether ``folder`` holds a database of this generator and nothing else."""
    names = {entry.name for entry in folder.iterdir()}
    return TRUTH_FILE in names and names <= DATABASE_FILES


def _generate_into(
    folder: Path, n_patients: int, seed: int, batch_patients: int, spec: Shift, record: bool
) -> dict:
    """Write every file into ``folder``; ``record`` adds the shift's truth and record."""
    writers = {
        "CHARTEVENTS": _Writer(folder / "CHARTEVENTS.csv", CHART_COLUMNS),
        "LABEVENTS": _Writer(folder / "LABEVENTS.csv", LAB_COLUMNS),
        "OUTPUTEVENTS": _Writer(folder / "OUTPUTEVENTS.csv", OUTPUT_COLUMNS),
    }
    static: dict[str, list[pl.DataFrame]] = {
        k: [] for k in ("PATIENTS", "ADMISSIONS", "ICUSTAYS", "TRANSFERS", "DIAGNOSES_ICD", "truth")
    }
    hourly = _Writer(folder / TRUTH_HOURLY_FILE, list(_HOURLY_COLUMNS), mimic_style=False)
    try:
        for start in range(0, n_patients, batch_patients):
            count = min(batch_patients, n_patients - start)
            # One generator per batch, seeded from (seed, batch): deterministic and
            # independent of how far earlier batches consumed their streams.
            rng = np.random.default_rng([seed, start])
            stays, tables = _patients_batch(rng, start, count, spec, record)
            hourly.write(tables.pop("hourly"))
            for name, frame in tables.items():
                static[name].append(frame)
            writers["CHARTEVENTS"].write(_chart_rows(rng, stays, spec))
            writers["LABEVENTS"].write(_lab_rows(rng, stays, spec))
            writers["OUTPUTEVENTS"].write(_output_rows(rng, stays))
    finally:
        for writer in writers.values():
            writer.close()
        hourly.close()
    for name in ("PATIENTS", "ADMISSIONS", "ICUSTAYS", "TRANSFERS", "DIAGNOSES_ICD"):
        frame = pl.concat(static[name])
        frame = frame.with_columns(
            pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias("ROW_ID")
        ).select(["ROW_ID", *frame.columns])
        with create_private_file(folder / f"{name}.csv") as handle:
            frame.write_csv(handle, quote_style="non_numeric", datetime_format="%Y-%m-%d %H:%M:%S")
    _dictionaries(folder, spec)
    _icd_dictionary(folder)
    truth = pl.concat(static["truth"])
    with create_private_file(folder / TRUTH_FILE) as handle:
        truth.write_csv(handle)
    if record:
        # Written into the same temporary folder as the tables: published with them.
        params = {**shift_record(spec), "patients": n_patients, "seed": seed}
        with create_private_file(folder / SHIFT_FILE) as handle:
            handle.write((json.dumps(params, indent=2, sort_keys=True) + "\n").encode())
    return {
        "patients": n_patients,
        "admissions": sum(f.height for f in static["ADMISSIONS"]),
        "icustays": truth.height,
        "rows": {name: writer.rows for name, writer in writers.items()},
        "deaths": int(truth["died"].sum()),
        "icu_deaths": int(truth["onset_hour"].is_not_null().sum()),
        "hourly_samples": hourly.rows,
        "mean_true_risk": float(truth["true_risk"].mean()),
        "seed": seed,
        "shift": spec.name if record else None,
    }


def _patients_batch(
    rng: np.random.Generator, start: int, count: int, spec: Shift, record: bool
) -> tuple[_Stays, dict[str, pl.DataFrame]]:
    """Patients, admissions, ICU stays, transfers, diagnoses and truth of one batch.

    A shift changes values here, never the number or order of random draws, so that a
    cohort shifted with the seed of a base cohort holds the same patients, stays and
    levels wherever the shift does not reach: the second site charts the base cohort's
    patients, and the mechanism shift gives the same stays and measurements other
    outcomes.
    """
    # MIMIC-III subject ids are below 100000 and admission ids from 100001: keeping the two
    # apart means a join on the wrong id column fails loudly on synthetic data too. Five
    # digits, like most real subject ids, so an id never looks like a small setting value.
    subject = 10001 + start + np.arange(count)
    metavision_p = rng.random(count) < 0.5
    gender = np.where(rng.random(count) < 0.55, "M", "F")
    kind = rng.random(count)
    age = np.clip(rng.normal(spec.age_mean, spec.age_sd, count), spec.age_min, 88.9)
    minors = rng.uniform(15.0, 17.9, count)  # drawn either way: the stream stays aligned
    if spec.minors:
        age = np.where(kind < 0.03, minors, age)
    shifted = kind > 0.95
    # One admission per patient; admission starts spread over a century of shifted dates.
    admit = (rng.uniform(0, 90 * 365.25, count) * 86400).astype(np.int64)
    hadm = 100001 + start + np.arange(count)
    two_stays = rng.random(count) < 0.08
    first_in = admit + (rng.uniform(0.2, 24.0, count) * 3600).astype(np.int64)
    long_stay = rng.random(count) < 0.85
    los_unit = rng.exponential(1.0, count)  # E ~ Exp(1), scaled by the severity below
    short_los = rng.uniform(*SHORT_STAY_H, count)
    gap_h = rng.uniform(2.0, 48.0, count)
    second_los = rng.uniform(20.0, 120.0, count)

    # Stays: the first of every admission, then the second ones.
    idx = np.concatenate([np.arange(count), np.flatnonzero(two_stays)])
    n_stays = len(idx)
    is_second = np.arange(n_stays) >= count
    icustay = 200001 + 2 * (start + idx) + is_second
    severity = rng.normal(size=n_stays)
    if spec.severity_mean:
        severity = severity + spec.severity_mean
    z = {
        name: SEVERITY_LOADING * severity
        + np.sqrt(1 - SEVERITY_LOADING**2) * rng.normal(size=n_stays)
        for name in RISK_VARIABLES
    }
    latents = {name: rng.normal(size=n_stays) for name in PHENOTYPE_LATENTS}
    # The first stay's LOS: long ones grow with the severity.
    scale = los_scale(severity[:count])
    los_h = np.where(long_stay, LONG_STAY_MIN_H + los_unit * scale, short_los)
    first_out = first_in + (los_h * 3600).astype(np.int64)
    second_in = first_out + (gap_h * 3600).astype(np.int64)
    second_out = second_in + (second_los * 3600).astype(np.int64)
    last_out = np.where(two_stays, second_out, first_out)
    intime = np.where(is_second, second_in[idx], first_in[idx])
    outtime = np.where(is_second, second_out[idx], first_out[idx])

    base_risk = planted_risk(z)
    risk = planted_risk(z, shift_coefficients(spec), shift_intercept(spec))
    died_stay = rng.random(n_stays) < risk
    # The admission's outcome is the one of its first stay (the cohort keeps only
    # admissions with one ICU stay, so second stays never reach the task).
    died = died_stay[:count]
    # Where the death happens. In the ICU (at OUTTIME) for 70% of the deaths of one-stay
    # admissions whose long stay leaves room for the whole deterioration after the first
    # 48 h (onset = LOS - W >= 48.5 h, so the in-hospital-mortality window never shows
    # it); otherwise 24.5-72 h after the last ICU discharge, so that no decompensation
    # sample (all within the ICU stay) is within 24 h of a death it gives no sign of.
    window_h = rng.uniform(*DETERIORATION_WINDOW_H, count)
    in_icu_u = rng.random(count)
    icu_death = (
        died
        & ~two_stays
        & long_stay
        & (in_icu_u < P_ICU_DEATH)
        & (los_h - window_h >= LONG_STAY_MIN_H)
    )
    post_icu = (rng.uniform(*POST_ICU_DEATH_H, count) * 3600).astype(np.int64)
    death_at = np.where(icu_death, first_out, last_out + post_icu)
    onset_first = np.where(icu_death, (first_out - first_in) / 3600.0 - window_h, np.nan)
    onset = np.where(is_second, np.nan, onset_first[idx])
    disch = last_out + (rng.uniform(6.0, 120.0, count) * 3600).astype(np.int64)
    disch = np.where(died, death_at, disch)
    dob = first_in - (age * 365.0 * 86400).astype(np.int64)
    dob = np.where(shifted, dob - np.int64(300 * 365 * 86400), dob)
    dob = (dob // 86400) * 86400
    later_death = ~died & (rng.random(count) < 0.15)
    dod_sec = np.where(
        died, death_at, disch + (rng.uniform(30, 900, count) * 86400).astype(np.int64)
    )
    dod_sec = (dod_sec // 86400) * 86400
    has_dod = died | later_death

    transfer = rng.random(n_stays) < 0.07
    first_unit = rng.integers(0, len(CAREUNITS), n_stays)
    last_unit = np.where(transfer, (first_unit + 1) % len(CAREUNITS), first_unit)
    first_ward = rng.integers(1, 60, n_stays)
    last_ward = np.where(transfer, first_ward + 1, first_ward)
    dbsource = np.where(metavision_p[idx], "metavision", "carevue")
    null_dt = pl.Series([None] * count, dtype=pl.Datetime("us"))

    patients = pl.DataFrame(
        {
            "SUBJECT_ID": subject,
            "GENDER": gender,
            "DOB": _times(dob),
            "DOD": pl.select(
                pl.when(pl.Series(has_dod)).then(_times(dod_sec)).otherwise(null_dt)
            ).to_series(),
            "DOD_HOSP": pl.select(
                pl.when(pl.Series(died)).then(_times(dod_sec)).otherwise(null_dt)
            ).to_series(),
            "DOD_SSN": pl.select(
                pl.when(pl.Series(has_dod)).then(_times(dod_sec)).otherwise(null_dt)
            ).to_series(),
            "EXPIRE_FLAG": has_dod.astype(np.int64),
        }
    )
    admissions = pl.DataFrame(
        {
            "SUBJECT_ID": subject,
            "HADM_ID": hadm,
            "ADMITTIME": _times(admit),
            "DISCHTIME": _times(disch),
            "DEATHTIME": pl.select(
                pl.when(pl.Series(died)).then(_times(death_at)).otherwise(null_dt)
            ).to_series(),
            "ADMISSION_TYPE": np.where(rng.random(count) < 0.8, "EMERGENCY", "ELECTIVE"),
            "ADMISSION_LOCATION": "EMERGENCY ROOM ADMIT",
            "DISCHARGE_LOCATION": np.where(died, "DEAD/EXPIRED", "HOME"),
            "INSURANCE": "Medicare",
            "LANGUAGE": "ENGL",
            "RELIGION": "NOT SPECIFIED",
            "MARITAL_STATUS": "MARRIED",
            "ETHNICITY": rng.choice(
                [
                    "WHITE",
                    "BLACK/AFRICAN AMERICAN",
                    "HISPANIC OR LATINO",
                    "ASIAN",
                    "UNKNOWN/NOT SPECIFIED",
                ],
                count,
            ),
            "EDREGTIME": null_dt,
            "EDOUTTIME": null_dt,
            "DIAGNOSIS": "SEPSIS",
            "HOSPITAL_EXPIRE_FLAG": died.astype(np.int64),
            "HAS_CHARTEVENTS_DATA": 1,
        }
    )
    icustays = pl.DataFrame(
        {
            "SUBJECT_ID": subject[idx],
            "HADM_ID": hadm[idx],
            "ICUSTAY_ID": icustay,
            "DBSOURCE": dbsource,
            "FIRST_CAREUNIT": np.array(CAREUNITS)[first_unit],
            "LAST_CAREUNIT": np.array(CAREUNITS)[last_unit],
            "FIRST_WARDID": first_ward,
            "LAST_WARDID": last_ward,
            "INTIME": _times(intime),
            "OUTTIME": _times(outtime),
            "LOS": np.round((outtime - intime) / 86400.0, 4),
        }
    )
    transfers = pl.DataFrame(
        {
            "SUBJECT_ID": subject[idx],
            "HADM_ID": hadm[idx],
            "ICUSTAY_ID": icustay,
            "DBSOURCE": dbsource,
            "EVENTTYPE": np.where(is_second, "transfer", "admit"),
            "PREV_CAREUNIT": None,
            "CURR_CAREUNIT": np.array(CAREUNITS)[first_unit],
            "PREV_WARDID": None,
            "CURR_WARDID": first_ward,
            "INTIME": _times(intime),
            "OUTTIME": _times(outtime),
            "LOS": np.round((outtime - intime) / 3600.0, 2),
        }
    )
    # Phenotypes, per admission from its first stay: label k is present with the planted
    # probability; a present label gets one of its codes, every admission 1-5 codes outside
    # the 25, in random order; 2% of admissions have no diagnosis row at all.
    inputs = {
        "s": severity[:count],
        **{f"z_{name}": z[name][:count] for name in RISK_VARIABLES},
        **{name: latents[name][:count] for name in PHENOTYPE_LATENTS},
    }
    pheno_p = phenotype_probabilities(inputs)
    present = rng.random(pheno_p.shape) < pheno_p
    pick = rng.random(pheno_p.shape)
    n_filler = rng.integers(1, 6, count)
    # n_filler distinct filler codes: those of the smallest random keys.
    filler_rank = np.argsort(np.argsort(rng.random((count, len(_FILLER_CODES))), axis=1), axis=1)
    filler_adm, filler_pick = np.nonzero(filler_rank < n_filler[:, None])
    no_codes = rng.random(count) < 0.02
    adm_p, label = np.nonzero(present)
    code_index = _PHENOTYPE_OFFSETS[label] + np.minimum(
        (pick[adm_p, label] * _PHENOTYPE_LENGTHS[label]).astype(np.int64),
        _PHENOTYPE_LENGTHS[label] - 1,
    )
    code_adm = np.concatenate([adm_p, filler_adm])
    codes = np.concatenate([_PHENOTYPE_CODES[code_index], _FILLER_CODES[filler_pick]])
    order_key = rng.random(len(code_adm))
    keep = ~no_codes[code_adm]
    code_adm, codes, order_key = code_adm[keep], codes[keep], order_key[keep]
    order = np.lexsort((order_key, code_adm))
    code_adm, codes = code_adm[order], codes[order]
    per_adm = np.bincount(code_adm, minlength=count)
    seq = np.arange(len(code_adm)) - np.repeat(np.cumsum(per_adm) - per_adm, per_adm) + 1
    diagnoses = pl.DataFrame(
        {
            "SUBJECT_ID": subject[code_adm],
            "HADM_ID": hadm[code_adm],
            "SEQ_NUM": seq.astype(np.int64),
            "ICD9_CODE": pl.Series(codes, dtype=pl.String),
        }
    )
    death_hour = np.where(died[idx], (death_at[idx] - intime) / 3600.0, np.nan)
    truth = pl.DataFrame(
        {
            "subject_id": subject[idx],
            "hadm_id": hadm[idx],
            "icustay_id": icustay,
            "true_risk": risk,
            "died": np.where(is_second, died[idx], died_stay).astype(np.int64),
            "true_los_hours": (outtime - intime) / 3600.0,
            "los_scale_hours": np.where(is_second | ~long_stay[idx], np.nan, scale[idx]),
            "true_death_hour": death_hour,
            "onset_hour": onset,
            **{column: pheno_p[idx, k] for k, column in enumerate(PHENOTYPE_COLUMNS)},
        }
    ).fill_nan(None)
    if record:
        # What a benchmark needs per stay: which cohort, the risk a model of the base
        # cohort should give (the base formula on the same levels) and the latent levels.
        truth = truth.with_columns(
            shift=pl.lit(spec.name),
            base_risk=base_risk,
            severity=severity,
            **{f"z_{name}": z[name] for name in RISK_VARIABLES},
            **{f"latent_{name}": latents[name] for name in PHENOTYPE_LATENTS},
        )
    respiratory = sigmoid(
        RESPIRATORY_VENTILATION[0] + RESPIRATORY_VENTILATION[1] * latents["respiratory"]
    )
    weight_noise = np.sqrt(1 - METABOLIC_WEIGHT**2) * rng.normal(size=n_stays)
    stays = _Stays(
        subject=subject[idx],
        hadm=hadm[idx],
        icustay=icustay,
        metavision=metavision_p[idx],
        intime=intime,
        outtime=outtime,
        z=z,
        severity=severity,
        arterial=rng.random(n_stays) < 0.4,
        ventilated=rng.random(n_stays) < respiratory,
        weight=np.clip(
            80.0 + 18.0 * (METABOLIC_WEIGHT * latents["metabolic"] + weight_noise), 40, 200
        ),
        height=np.clip(rng.normal(170.0, 10.0, n_stays), 145, 205),
        onset=onset,
        neuro=latents["neuro"],
    )
    hourly = _hourly_truth(stays, died[idx], death_hour, scale[idx])
    tables = {
        "PATIENTS": patients,
        "ADMISSIONS": admissions,
        "ICUSTAYS": icustays,
        "TRANSFERS": transfers,
        "DIAGNOSES_ICD": diagnoses,
        "truth": truth,
        "hourly": hourly,
    }
    return stays, tables


def _hourly_truth(
    stays: _Stays, died: np.ndarray, death_hour: np.ndarray, scale: np.ndarray
) -> pl.DataFrame:
    """The decompensation and length-of-stay sample hours of each stay and their risk.

    The hours are the benchmark's: integers ``t`` with ``FIRST_SAMPLE_HOUR <= t <=
    min(LOS, hours to DEATHTIME) + 1e-6``, LOS as ICUSTAYS.LOS (days, 4 decimals) * 24.
    Every stay has a charted event within its first 2 h, so the first-event bound never binds.
    """
    los = np.round((stays.outtime - stays.intime) / 86400.0, 4) * 24.0
    lived = np.where(died, death_hour, np.inf)
    last = np.floor(np.minimum(los, lived) + 1e-6).astype(np.int64)
    counts = np.maximum(last - FIRST_SAMPLE_HOUR + 1, 0)
    stay = np.repeat(np.arange(len(los)), counts)
    first = np.cumsum(counts) - counts
    hour = FIRST_SAMPLE_HOUR + np.arange(len(stay)) - np.repeat(first, counts)
    risk = decompensation_risk(hour - stays.onset[stay], scale[stay])
    return pl.DataFrame(
        {"icustay_id": stays.icustay[stay], "hour": hour.astype(np.int64), "true_decomp_risk": risk}
    )


def _schedule(rng, stays: _Stays, every_h: float, jitter_h: float, start_h: float = 0.0):
    """Measurement times (stay index, hours since INTIME) every ``every_h`` hours to OUTTIME."""
    length = (stays.outtime - stays.intime) / 3600.0
    counts = np.maximum(np.floor((length - start_h) / every_h).astype(np.int64) + 1, 0)
    stay = np.repeat(np.arange(len(length)), counts)
    first = np.cumsum(counts) - counts
    step = np.arange(len(stay)) - np.repeat(first, counts)
    hours = start_h + step * every_h + rng.uniform(0.0, jitter_h, len(stay))
    keep = hours <= length[stay]
    return stay[keep], hours[keep]


def _drift(stays: _Stays, stay: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """Fraction (0-1) of the full deterioration at ``hours``: 0 before the onset, or none."""
    since = hours - stays.onset[stay]
    return np.clip(np.nan_to_num(since, nan=0.0) / DETERIORATION_RAMP_H, 0.0, 1.0)


def _level(stays: _Stays, name: str, stay: np.ndarray, hours: np.ndarray) -> np.ndarray:
    centre, scale, _ = LEVELS[name]
    level = stays.z[name][stay]
    if DETERIORATION[name]:
        level = level + DETERIORATION[name] * _drift(stays, stay, hours)
    return centre + scale * level


def _chart_rows(rng: np.random.Generator, stays: _Stays, spec: Shift) -> pl.DataFrame:
    blocks: list[dict[str, np.ndarray]] = []

    def add(item_key: str | None, stay, hours, text, number, itemid=None, unit_key=None):
        if item_key in spec.never_charted:
            return  # the values were drawn (the stream stays aligned) but are not charted
        mv = stays.metavision[stay]
        if itemid is None:
            itemid = np.where(mv, ITEMS[item_key]["mv"], ITEMS[item_key]["cv"])
        units = UNITS.get(unit_key or item_key or "", {"cv": None, "mv": None})
        blocks.append(
            {
                "stay": stay,
                "hours": hours,
                "itemid": np.broadcast_to(itemid, stay.shape),
                "text": text,
                "number": number,
                "uom": np.where(mv, units["mv"] or "", units["cv"] or ""),
            }
        )

    # Hourly vitals (or a shifted site's interval) with 8% of times missing; values carry
    # AR-free noise around the level.
    stay, hours = _schedule(rng, stays, spec.vitals_every_h, spec.vitals_jitter_h)
    for name in ("hr", "map", "rr", "spo2"):
        keep = rng.random(len(stay)) > 0.08
        s, h = stay[keep], hours[keep]
        noise = LEVELS[name][2]
        value = _level(stays, name, s, h) + rng.normal(0.0, noise, len(s))
        if name == "spo2":
            value = np.minimum(np.round(value), 100.0)
        else:
            value = np.round(value)
        add(name, s, h, None, value)
        if name == "map":
            sbp = np.round(value + 40.0 + rng.normal(0, 4, len(s)))
            dbp = np.round(value - 20.0 + rng.normal(0, 3, len(s)))
            add("sbp", s, h, None, sbp)
            add("dbp", s, h, None, dbp)
    # Temperature every 4 h: Fahrenheit for CareVue, Celsius for MetaVision.
    stay, hours = _schedule(rng, stays, 4.0, 1.0)
    celsius = _level(stays, "temp", stay, hours) + rng.normal(0, LEVELS["temp"][2], len(stay))
    mv = stays.metavision[stay]
    if spec.temperature_fahrenheit:
        # Every stay in Fahrenheit: MetaVision's own Fahrenheit item, CareVue's as ever.
        itemid = np.where(mv, TEMP_FAHRENHEIT_MV, ITEMS["temp"]["cv"])
        add("temp", stay, hours, None, np.round(celsius * 9 / 5 + 32, 1), itemid, "temp_f")
    else:
        add("temp", stay, hours, None, np.round(np.where(mv, celsius, celsius * 9 / 5 + 32), 1))
    # Fingerstick glucose every 6 h (or a shifted site's interval).
    stay, hours = _schedule(rng, stays, spec.glucose_every_h, spec.glucose_jitter_h, 0.5)
    value = _level(stays, "glucose", stay, hours) + rng.normal(0, LEVELS["glucose"][2], len(stay))
    add("glucose_chart", stay, hours, None, np.round(np.maximum(value, 30.0)))
    # GCS every 4 h, from severity: components for both systems, total for CareVue.
    stay, hours = _schedule(rng, stays, 4.0, 1.0, 0.2)
    total = (
        15.0
        - 2.5 * np.maximum(stays.severity[stay], 0.0)
        - NEURO_GCS * np.maximum(stays.neuro[stay], 0.0)
        - GCS_DETERIORATION * _drift(stays, stay, hours)
        + rng.normal(0, 1.0, len(stay))
    )
    total = np.clip(np.round(total), 3, 15)
    eye = np.clip(np.ceil(total * 4 / 15), 1, 4)
    verbal = np.clip(np.round(total * 5 / 15), 1, 5)
    motor = np.clip(total - eye - verbal, 1, 6)
    total = eye + verbal + motor
    mv = stays.metavision[stay]
    for key, score in (("gcs_eye", eye), ("gcs_motor", motor), ("gcs_verbal", verbal)):
        labels_cv = np.array(GCS_TEXT["cv"][key])
        labels_mv = np.array(GCS_TEXT["mv"][key])
        code = score.astype(np.int64) - 1
        add(key, stay, hours, np.where(mv, labels_mv[code], labels_cv[code]), score)
    cv = ~mv
    add(
        None,
        stay[cv],
        hours[cv],
        total[cv].astype(np.int64).astype(str),
        total[cv],
        itemid=GCS_TOTAL_CV,
    )
    # Capillary refill (CareVue only) every 8 h.
    stay, hours = _schedule(rng, stays, 8.0, 2.0, 1.0)
    cv = ~stays.metavision[stay]
    stay, hours = stay[cv], hours[cv]
    slow = rng.random(len(stay)) < sigmoid(stays.severity[stay] - 1.5)
    add(
        None,
        stay,
        hours,
        np.where(slow, "Abnormal >3 secs", "Normal <3 secs"),
        np.full(len(stay), np.nan),
        itemid=CRR_CV,
    )
    # FiO2 for ventilated stays every 4 h, in percent.
    stay, hours = _schedule(rng, stays, 4.0, 1.0, 0.3)
    vent = stays.ventilated[stay]
    stay, hours = stay[vent], hours[vent]
    add("fio2", stay, hours, None, rng.choice([40.0, 50.0, 60.0, 100.0], len(stay)))
    # Weight and height once, shortly after admission.
    n = len(stays.icustay)
    every = np.arange(n)
    add("weight", every, rng.uniform(0.1, 3.0, n), None, np.round(stays.weight, 1))
    mv = stays.metavision
    height = np.where(mv, np.round(stays.height), np.round(stays.height / 2.54))
    add("height", every, rng.uniform(0.1, 3.0, n), None, height)
    # Items outside the 17 variables, charted with the vitals: most of the table, as in
    # MIMIC-III.
    stay, hours = _schedule(rng, stays, spec.vitals_every_h, spec.vitals_jitter_h)
    mv = stays.metavision[stay]
    for slot in range(len(OTHER_CHART["cv"])):
        cv_item, mv_item = OTHER_CHART["cv"][slot], OTHER_CHART["mv"][slot]
        itemid = np.where(mv, mv_item[0], cv_item[0])
        if cv_item[2] == "text":
            text = rng.choice(OTHER_TEXT, len(stay))
            number = np.full(len(stay), np.nan)
        else:
            text = None
            number = np.round(rng.uniform(50, 150, len(stay)))
        add(None, stay, hours, text, number, itemid=itemid)

    stay = np.concatenate([b["stay"] for b in blocks])
    hours = np.concatenate([b["hours"] for b in blocks])
    itemid = np.concatenate([b["itemid"] for b in blocks]).astype(np.int64)
    number = np.concatenate([b["number"] for b in blocks]).astype(np.float64)
    uom = np.concatenate([b["uom"] for b in blocks])
    text_parts = []
    for block in blocks:
        if block["text"] is None:
            text_parts.append(
                pl.Series(block["number"]).cast(pl.Int64, strict=False).cast(pl.String)
                if _integral(block["number"])
                else pl.Series(block["number"]).cast(pl.String)
            )
        else:
            text_parts.append(pl.Series(block["text"]).cast(pl.String))
    value = pl.concat(text_parts)
    n_rows = len(stay)
    empty = rng.random(n_rows) < 0.01
    no_icu = rng.random(n_rows) < 0.02
    charttime = (stays.intime[stay] + (hours * 3600).astype(np.int64)) // 60 * 60
    frame = pl.DataFrame(
        {
            "SUBJECT_ID": stays.subject[stay],
            "HADM_ID": stays.hadm[stay],
            "ICUSTAY_ID": pl.Series(stays.icustay[stay]).set(pl.Series(no_icu), None),
            "ITEMID": itemid,
            "CHARTTIME": _times(charttime),
            "STORETIME": _times(charttime + 1800),
            "CGID": 14000 + (stay % 500),
            "VALUE": value.set(pl.Series(empty), None),
            "VALUENUM": pl.Series(number).fill_nan(None).set(pl.Series(empty), None),
            "VALUEUOM": pl.Series(uom).replace("", None),
            "WARNING": 0,
            "ERROR": 0,
            "RESULTSTATUS": None,
            "STOPPED": None,
        }
    )
    return frame.with_columns(pl.col("RESULTSTATUS", "STOPPED").cast(pl.String))


def _integral(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(np.all(finite == np.round(finite)))


def _lab_rows(rng: np.random.Generator, stays: _Stays, spec: Shift) -> pl.DataFrame:
    parts = []
    # Blood gases and chemistry every 8 h (or a shifted site's interval) from 6 h before
    # ICU admission (some pre-ICU).
    stay, hours = _schedule(rng, stays, spec.labs_every_h, spec.labs_jitter_h, -6.0)
    for itemid in LAB_ITEMS:
        if itemid == 50931:
            value = _level(stays, "glucose", stay, hours)
            value = value + rng.normal(0, LEVELS["glucose"][2], len(stay))
            value = np.round(np.maximum(value, 30.0))
            text = pl.Series(value).cast(pl.Int64).cast(pl.String)
        elif itemid == 50820:
            value = _level(stays, "ph", stay, hours) + rng.normal(0, LEVELS["ph"][2], len(stay))
            if spec.ph_offset:
                value = value + spec.ph_offset
            value = np.round(value, 2)
            text = pl.Series(value).round(2).cast(pl.String)
        else:
            value = np.round(rng.uniform(1.0, 140.0, len(stay)), 1)
            text = pl.Series(value).cast(pl.String)
        parts.append(
            pl.DataFrame(
                {
                    "stay": stay,
                    "hours": hours,
                    "ITEMID": np.full(len(stay), itemid, np.int64),
                    "VALUE": text,
                    "VALUENUM": value,
                    "VALUEUOM": LAB_ITEMS[itemid][3],
                }
            )
        )
    frame = pl.concat(parts)
    stay = frame["stay"].to_numpy()
    n_rows = frame.height
    # A few results are "ERROR" (dropped by cleaning), some have no admission id.
    error = rng.random(n_rows) < 0.003
    no_hadm = rng.random(n_rows) < 0.03
    charttime = (
        (stays.intime[stay] + (frame["hours"].to_numpy() * 3600).astype(np.int64)) // 60 * 60
    )
    return pl.DataFrame(
        {
            "SUBJECT_ID": stays.subject[stay],
            "HADM_ID": pl.Series(stays.hadm[stay]).set(pl.Series(no_hadm), None),
            "ITEMID": frame["ITEMID"],
            "CHARTTIME": _times(charttime),
            "VALUE": frame["VALUE"].set(pl.Series(error), "ERROR"),
            "VALUENUM": frame["VALUENUM"].set(pl.Series(error), None),
            "VALUEUOM": frame["VALUEUOM"],
            "FLAG": pl.Series([None] * n_rows, dtype=pl.String),
        }
    )


def _output_rows(rng: np.random.Generator, stays: _Stays) -> pl.DataFrame:
    # Hourly urine output at every site: no shift touches it (it feeds none of the 17).
    stay, hours = _schedule(rng, stays, 1.0, 0.5)
    mv = stays.metavision[stay]
    charttime = (stays.intime[stay] + (hours * 3600).astype(np.int64)) // 60 * 60
    null = pl.Series([None] * len(stay), dtype=pl.String)
    return pl.DataFrame(
        {
            "SUBJECT_ID": stays.subject[stay],
            "HADM_ID": stays.hadm[stay],
            "ICUSTAY_ID": stays.icustay[stay],
            "CHARTTIME": _times(charttime),
            "ITEMID": np.where(mv, OUTPUT_ITEMS["mv"][0], OUTPUT_ITEMS["cv"][0]).astype(np.int64),
            "VALUE": np.round(rng.uniform(0.0, 150.0, len(stay))),
            "VALUEUOM": "ml",
            "STORETIME": _times(charttime + 1200),
            "CGID": 14000 + (stay % 500),
            "STOPPED": null,
            "NEWBOTTLE": null,
            "ISERROR": null,
        }
    )


def _dictionaries(folder: Path, spec: Shift) -> None:
    labels = dict(CHART_LABELS)
    if spec.temperature_fahrenheit:
        labels[TEMP_FAHRENHEIT_MV] = "Temperature Fahrenheit"
    chart = [(i, labels[i], "metavision" if i >= 220000 else "carevue") for i in sorted(labels)]
    for system in ("cv", "mv"):
        for itemid, label, _ in OTHER_CHART[system]:
            chart.append((itemid, label, "metavision" if system == "mv" else "carevue"))
    rows = [(i, lab, src, "chartevents") for i, lab, src in chart]
    for system, (itemid, label) in OUTPUT_ITEMS.items():
        rows.append((itemid, label, "metavision" if system == "mv" else "carevue", "outputevents"))
    d_items = pl.DataFrame(
        {
            "ROW_ID": np.arange(1, len(rows) + 1),
            "ITEMID": [r[0] for r in rows],
            "LABEL": [r[1] for r in rows],
            "ABBREVIATION": None,
            "DBSOURCE": [r[2] for r in rows],
            "LINKSTO": [r[3] for r in rows],
            "CATEGORY": None,
            "UNITNAME": None,
            "PARAM_TYPE": None,
            "CONCEPTID": None,
        }
    ).with_columns(
        pl.col("ABBREVIATION", "CATEGORY", "UNITNAME", "PARAM_TYPE", "CONCEPTID").cast(pl.String)
    )
    with create_private_file(folder / "D_ITEMS.csv") as handle:
        d_items.write_csv(handle, quote_style="non_numeric")
    labs = sorted(LAB_ITEMS.items())
    d_lab = pl.DataFrame(
        {
            "ROW_ID": np.arange(1, len(labs) + 1),
            "ITEMID": [i for i, _ in labs],
            "LABEL": [v[0] for _, v in labs],
            "FLUID": [v[1] for _, v in labs],
            "CATEGORY": [v[2] for _, v in labs],
            "LOINC_CODE": None,
        }
    ).with_columns(pl.col("LOINC_CODE").cast(pl.String))
    with create_private_file(folder / "D_LABITEMS.csv") as handle:
        d_lab.write_csv(handle, quote_style="non_numeric")
