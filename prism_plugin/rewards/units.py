"""The unit table of the answer matchers: every unit word is a real unit or a counting word.

A real unit has a dimension and an exact factor to that dimension's base unit, so two
units compare only through :func:`to_base` within one dimension ("3 m" == "300 cm",
"5 kJ" == "5000 J", "60 mph" == "96.56064 km/h"). A unit whose conversion is not exact
or not a factor gets a dimension of its own and matches only itself:

- temperatures (°C, °F, K) are affine, and a temperature difference converts differently
  from a temperature, so no conversion is attempted; a bare degree sign ("°", "度") may
  stand for °C or °F (see :func:`same_unit`);
- years and months convert into each other (12) but not into days (365 or 366; 28–31);
- "ton" is a short, long or metric ton; "calorie" is a small or a food (kilo) calorie;
  cal/kcal do not convert to joules (4.184, 4.1868 or a textbook's 4.2 J).

Counting words and classifiers (个, 人, apples, times …) carry no unit: they map to "".
Ambiguous short words take their usual science reading: "m" is the metre (never the
minute), "t" the tonne, "in" the inch, "s"/"h"/"min" second/hour/minute; "分" (minute,
cent or point) is a counting word, "A" is the ampere and "K" the kelvin.
"""

from __future__ import annotations

import math

# alias (as written after a number) -> canonical unit ('' for a counting word)
UNIT_ALIASES: dict[str, str] = {}
# canonical unit -> (dimension, factor to the dimension's base unit)
DIMENSIONS: dict[str, tuple[str, float]] = {}


def _unit(canonical_unit: str, dimension: str, factor: float, *names: str) -> None:
    """Register a real unit; ``^2``/``^3`` in a name is also accepted as ``^{2}``/``^{3}``."""
    DIMENSIONS[canonical_unit] = (dimension, factor)
    for name in (canonical_unit, *names):
        UNIT_ALIASES[name] = canonical_unit
        for power in ("^2", "^3"):
            if power in name:
                UNIT_ALIASES[name.replace(power, "^{" + power[1] + "}")] = canonical_unit


def _own(canonical_unit: str, *names: str) -> None:
    """A unit without an exact conversion: a dimension of its own, matching only itself."""
    _unit(canonical_unit, canonical_unit, 1.0, *names)


_unit("nm", "length", 1e-9, "nanometer", "nanometers", "nanometre", "nanometres", "纳米")
_unit("μm", "length", 1e-6, "um", "micrometer", "micrometers", "micrometre", "micrometres", "微米")
_unit("mm", "length", 1e-3, "millimeter", "millimeters", "millimetre", "millimetres", "毫米")
_unit("cm", "length", 1e-2, "centimeter", "centimeters", "centimetre", "centimetres", "厘米")
_unit("dm", "length", 0.1, "decimeter", "decimeters", "分米")
_unit("m", "length", 1.0, "meter", "meters", "metre", "metres", "米")
_unit("km", "length", 1e3, "kilometer", "kilometers", "kilometre", "kilometres", "千米", "公里")
_unit("in", "length", 0.0254, "inch", "inches")
_unit("ft", "length", 0.3048, "foot", "feet")
_unit("yd", "length", 0.9144, "yard", "yards")
_unit("mi", "length", 1609.344, "mile", "miles")
_unit("mg", "mass", 1e-3, "milligram", "milligrams", "毫克")
_unit("g", "mass", 1.0, "gram", "grams", "克")
_unit("kg", "mass", 1e3, "kilogram", "kilograms", "千克", "公斤")
_unit("t", "mass", 1e6, "tonne", "tonnes", "metric ton", "metric tons", "吨")
_unit("oz", "mass", 28.349523125, "ounce", "ounces")
_unit("lb", "mass", 453.59237, "lbs")
_own("ton", "tons")
_unit("ms", "time", 1e-3, "millisecond", "milliseconds", "毫秒")
_unit("s", "time", 1.0, "sec", "secs", "second", "seconds", "秒")
_unit("min", "time", 60.0, "mins", "minute", "minutes", "分钟")
_unit("h", "time", 3600.0, "hr", "hrs", "hour", "hours", "小时")
_unit("day", "time", 86400.0, "days", "天")
_unit("week", "time", 604800.0, "weeks", "周", "星期")
_unit("month", "calendar time", 1.0, "months", "个月")
_unit("year", "calendar time", 12.0, "years", "yr", "yrs", "年")
_unit("mm^2", "area", 1e-6, "mm2", "平方毫米")
_unit("cm^2", "area", 1e-4, "cm2", "平方厘米")
_unit("dm^2", "area", 1e-2, "dm2", "平方分米")
_unit("m^2", "area", 1.0, "m2", "平方米")
_unit("ha", "area", 1e4, "hectare", "hectares", "公顷")
_unit("km^2", "area", 1e6, "km2", "平方千米", "平方公里")
_unit("mm^3", "volume", 1e-9, "mm3", "立方毫米")
_unit("cm^3", "volume", 1e-6, "cm3", "cc", "立方厘米")
_unit("dm^3", "volume", 1e-3, "dm3", "立方分米")
_unit("m^3", "volume", 1.0, "m3", "立方米")
_unit("ml", "volume", 1e-6, "mL", "milliliter", "milliliters", "millilitre", "毫升")
_unit("l", "volume", 1e-3, "L", "liter", "liters", "litre", "litres", "升")
_unit("m/s", "speed", 1.0, "m/sec", "meters per second", "metres per second", "米/秒", "米每秒")
_unit("m/min", "speed", 1 / 60, "米/分", "米/分钟", "米每分", "米每分钟")
_unit("km/s", "speed", 1e3, "千米/秒", "千米每秒")
_unit(
    "km/h",
    "speed",
    1 / 3.6,
    "kph",
    "km/hr",
    "kilometers per hour",
    "kilometres per hour",
    "千米/时",
    "千米/小时",
    "千米每小时",
    "公里/小时",
    "公里每小时",
)
_unit("mph", "speed", 0.44704, "mi/h", "miles per hour")  # 1609.344 m / 3600 s
_unit("m/s^2", "acceleration", 1.0, "m/s2", "米/秒^2", "米/秒2")
_unit("°", "angle", 1.0, "deg", "degree", "degrees", "度")
_unit("rad", "angle", 180 / math.pi, "radian", "radians", "弧度")
_unit("N", "force", 1.0, "newton", "newtons", "牛顿")
_unit("kN", "force", 1e3, "kilonewton", "kilonewtons", "千牛")
_unit("J", "energy", 1.0, "joule", "joules", "焦耳")
_unit("kJ", "energy", 1e3, "kilojoule", "kilojoules", "千焦")
_unit("MJ", "energy", 1e6, "megajoule", "megajoules", "兆焦")
_unit("kWh", "energy", 3.6e6, "kW·h", "kW h", "kilowatt-hour", "kilowatt-hours", "千瓦时")
_unit("cal", "calorie energy", 1.0)
_unit("kcal", "calorie energy", 1e3, "kilocalorie", "kilocalories", "千卡")
_own("calorie", "calories", "Calorie", "Calories")
_unit("mW", "power", 1e-3, "milliwatt", "milliwatts", "毫瓦")
_unit("W", "power", 1.0, "watt", "watts", "瓦特")
_unit("kW", "power", 1e3, "kilowatt", "kilowatts", "千瓦")
_unit("MW", "power", 1e6, "megawatt", "megawatts", "兆瓦")
_unit("Pa", "pressure", 1.0, "pascal", "pascals", "帕斯卡")
_unit("hPa", "pressure", 1e2, "hectopascal", "hectopascals", "百帕")
_unit("kPa", "pressure", 1e3, "kilopascal", "kilopascals", "千帕")
_unit("MPa", "pressure", 1e6, "megapascal", "megapascals", "兆帕")
_unit("bar", "pressure", 1e5, "bars")
_unit("atm", "pressure", 101325.0, "atmosphere", "atmospheres", "标准大气压")
_unit("Hz", "frequency", 1.0, "hertz", "赫兹")
_unit("kHz", "frequency", 1e3, "kilohertz", "千赫")
_unit("MHz", "frequency", 1e6, "megahertz", "兆赫")
_unit("GHz", "frequency", 1e9, "gigahertz")
_unit("mV", "voltage", 1e-3, "millivolt", "millivolts", "毫伏")
_unit("V", "voltage", 1.0, "volt", "volts", "伏特")
_unit("kV", "voltage", 1e3, "kilovolt", "kilovolts", "千伏")
_unit("mA", "current", 1e-3, "milliamp", "milliamps", "milliampere", "milliamperes", "毫安")
_unit("A", "current", 1.0, "amp", "amps", "ampere", "amperes", "安培")
_unit("Ω", "resistance", 1.0, "Omega", "ohm", "ohms", "欧姆")
_unit("kΩ", "resistance", 1e3, "k\\Omega", "kohm", "kilohm", "kilohms", "千欧")
_unit("MΩ", "resistance", 1e6, "M\\Omega", "megohm", "megohms", "兆欧")
_own("°C", "° C", "degC", "degree Celsius", "degrees Celsius", "Celsius", "摄氏度")
_own("°F", "° F", "degF", "degree Fahrenheit", "degrees Fahrenheit", "Fahrenheit", "华氏度")
_own("K", "kelvin", "kelvins", "开尔文")
_unit("元", "CNY", 1.0, "yuan", "块", "人民币")
_unit("角", "CNY", 0.1)
_unit("$", "USD", 1.0, "dollar", "dollars", "usd", "USD", "美元")
_unit("cent", "USD", 0.01, "cents", "美分")
_unit("€", "EUR", 1.0, "euro", "euros", "EUR", "欧元")
_unit("£", "GBP", 1.0, "GBP", "英镑")

# Counting words and classifiers are pure decoration: stripped, never compared.
for _word in (
    "个 人 只 本 次 岁 倍 页 辆 张 条 名 棵 件 种 分 份 朵 头 匹 位 支 把 杯 盒 袋 箱 台 道 组 根 双 对 层 "
    "units unit times people students apples items pieces points ways"
).split():
    UNIT_ALIASES[_word] = ""

# A bare degree sign may stand for a temperature unit ("25°" == "25 °C"): same number only.
_SAME_UNIT = {frozenset(("°", "°C")), frozenset(("°", "°F"))}


def same_unit(a: str, b: str) -> bool:
    """Two canonical units that compare by their numbers alone (identical, or ° with °C/°F)."""
    return a == b or frozenset((a, b)) in _SAME_UNIT


def to_base(unit: str, value: float) -> tuple[str, float] | None:
    """(dimension, value in the dimension's base unit), or None for '' or an unknown unit."""
    conv = DIMENSIONS.get(unit)
    if conv is None:
        return None
    return conv[0], value * conv[1]
