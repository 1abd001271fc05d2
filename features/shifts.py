"""Named, frozen shifts of the synthetic MIMIC-III cohort (see :mod:`features.synthetic`).

A :class:`Shift` says how a cohort differs from the base generator: who the patients are
(severity, age), how they die (the planted coefficients) and how the site charts them
(frequencies, units, calibration, a variable never charted). Every field defaults to the
base generator, so a shift names only what it changes and everything else stays as in the
base cohort. :data:`SHIFTS` holds the three named shifts below (what each changes, what it
keeps, why it is realistic) and :func:`resolve_shift` turns a name into one.

Named shifts
------------
``second-site``: another hospital charting the same kind of patients. The patients,
levels, risks and outcomes are the base cohort's for the same seed; what changes is how
they are recorded:

- the hourly vitals (heart rate, blood pressures, respiratory rate, SpO2) and the other
  hourly flowsheet items every ~3 h (interval 3 h plus up to 2 h delay), the lab panel
  every 12 h instead of 8 h, fingerstick glucose every 12 h instead of 6 h: a step-down
  unit's nursing ratio, the usual reason charting is sparser. Temperature, GCS and FiO2
  keep their 4-hourly round, urine output stays hourly;
- mean blood pressure is never charted (items 456 and 220181 absent): the site's monitors
  send systolic and diastolic only. Its level still drives the risk and still shows in
  the systolic and diastolic values (both derive from it), so the information is there,
  in other columns, and the grid's mean-BP column is its normal value throughout;
- temperature is charted in Fahrenheit for every stay, MetaVision included (item 223761
  "Temperature Fahrenheit" instead of 223762 in Celsius), as at most US hospitals. The
  extraction converts it (values >= 79 are taken as Fahrenheit), so the grid's
  temperature stays in Celsius: this checks the conversion, not the model;
- every lab pH (item 50820) reads 0.04 lower (0.8 sd of its level): the site draws mostly
  venous gases, whose pH runs 0.03-0.05 below arterial. Same item, same unit, nothing in
  the row marks it, so the extraction cannot remove it: a model of the base cohort sees
  acidotic, sicker-looking patients whose risk has not changed.

``older-sicker``: a referral centre's population. Severity ``s ~ N(1.5, 1)`` instead of
``N(0, 1)`` (so the levels ``z`` move by 0.9 sd and every measurement, GCS and capillary
refill follow), adults aged 75-89 (``N(82, 5)`` clipped to [75, 88.9]; the 5% over 89
stay) and no minors. The planted risk formula is unchanged, so the mortality rises to
about 40% only because the patients are sicker: a model that has learned the formula
stays calibrated, but sees levels beyond most of its training range. Age has no
coefficient, as in the base.

``mechanism``: the same patients and measurements in the first 48 h (for the same seed
every table is the base cohort's but the outcomes and, for a stay whose death in the ICU
comes or goes with the new outcome, the values of its terminal course after its onset,
always past 48 h), but death depends on them differently: the glucose
coefficient is 1.0 instead of 0.2 and heart rate's 0.0 instead of 0.5 (intercept
unchanged, so the mortality moves from about 12% to 14%). Like a change of case mix that no
measurement reveals (e.g. a diabetic ketoacidosis service, where hyperglycaemia is the
disease), only the outcomes can show it: nothing in the grid shifts, so an uncertainty
computed from the inputs alone cannot flag it.

This module holds data only; the generator reads the fields (and checks a custom shift's
values against its own variables) in :func:`features.synthetic.generate`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

#: The names :func:`features.synthetic.generate` accepts as ``shift``.
ShiftName = Literal["second-site", "older-sicker", "mechanism"]
SHIFT_NAMES: tuple[str, ...] = get_args(ShiftName)


@dataclass(frozen=True)
class Shift:
    """How a synthetic cohort departs from the base generator; defaults are the base.

    Attributes:
        name: Short name, recorded in the truth file's ``shift`` column.
        summary: One line saying what changes.
        severity_mean: Mean of the stay severity ``s`` (base 0, sd 1 either way).
        age_mean: Mean of the adult age draw in years (base 64).
        age_sd: Its standard deviation (base 15).
        age_min: Lower clip of the adult ages (base 18.5; ages are clipped at 88.9 above,
            and 5% of patients are over 89 as in MIMIC-III).
        minors: Whether 3% of patients are 15-17 years old (base: yes).
        intercept: Intercept of the planted logit; None keeps the base -2.9.
        coefficients: ``(variable, coefficient)`` pairs replacing the base coefficients of
            those variables; the others keep theirs.
        vitals_every_h: Charting interval of heart rate, blood pressure, respiratory rate,
            SpO2 and the other hourly chart items, in hours (base 1).
        vitals_jitter_h: Uniform delay added to each vitals time (base 0.9 h).
        labs_every_h: Interval of the blood gas and chemistry panel (base 8 h).
        labs_jitter_h: Its delay (base 3 h).
        glucose_every_h: Interval of the fingerstick glucose (base 6 h).
        glucose_jitter_h: Its delay (base 2 h).
        never_charted: Chart item keys of :data:`features.synthetic.ITEMS` that the site
            never charts (their levels still exist and still drive the risk).
        temperature_fahrenheit: Whether every stay charts temperature in Fahrenheit
            (MetaVision under item 223761 "Temperature Fahrenheit" instead of 223762 in
            Celsius); the extraction converts it back.
        ph_offset: Added to every lab pH (item 50820); the extraction cannot remove it.
    """

    name: str
    summary: str
    severity_mean: float = 0.0
    age_mean: float = 64.0
    age_sd: float = 15.0
    age_min: float = 18.5
    minors: bool = True
    intercept: float | None = None
    coefficients: tuple[tuple[str, float], ...] = ()
    vitals_every_h: float = 1.0
    vitals_jitter_h: float = 0.9
    labs_every_h: float = 8.0
    labs_jitter_h: float = 3.0
    glucose_every_h: float = 6.0
    glucose_jitter_h: float = 2.0
    never_charted: tuple[str, ...] = ()
    temperature_fahrenheit: bool = False
    ph_offset: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """The fields as JSON-ready values (pairs and tuples become lists)."""
        fields = asdict(self)
        fields["coefficients"] = {name: value for name, value in self.coefficients}
        fields["never_charted"] = list(self.never_charted)
        return fields


#: The base generator as a shift that changes nothing; ``generate(shift=None)`` uses it.
BASE = Shift(name="none", summary="the base cohort")

SHIFTS: dict[str, Shift] = {
    "second-site": Shift(
        name="second-site",
        summary=(
            "another hospital: vitals every ~3 h, labs every 12 h, mean BP never charted, "
            "temperature charted in Fahrenheit, venous pH 0.04 lower"
        ),
        vitals_every_h=3.0,
        vitals_jitter_h=2.0,
        labs_every_h=12.0,
        labs_jitter_h=4.0,
        glucose_every_h=12.0,
        glucose_jitter_h=4.0,
        never_charted=("map",),
        temperature_fahrenheit=True,
        ph_offset=-0.04,
    ),
    "older-sicker": Shift(
        name="older-sicker",
        summary="severity mean +1.5 sd, adults 75 and over, no minors; same risk formula",
        severity_mean=1.5,
        age_mean=82.0,
        age_sd=5.0,
        age_min=75.0,
        minors=False,
    ),
    "mechanism": Shift(
        name="mechanism",
        summary="glucose coefficient 0.2 -> 1.0 and heart rate 0.5 -> 0.0; same patients",
        coefficients=(("glucose", 1.0), ("hr", 0.0)),
    ),
}


def resolve_shift(shift: str | Shift | None) -> Shift:
    """The shift that ``generate(shift=...)`` means: a name, a :class:`Shift` or None.

    Raises:
        ValueError: One line naming ``shift`` and the known names, for an unknown name or
            a value of another type.
    """
    if shift is None:
        return BASE
    if isinstance(shift, Shift):
        return shift
    if isinstance(shift, str) and shift in SHIFTS:
        return SHIFTS[shift]
    known = ", ".join(repr(name) for name in SHIFT_NAMES)
    raise ValueError(f"shift must be None, a Shift or one of {known}; got {shift!r}")
