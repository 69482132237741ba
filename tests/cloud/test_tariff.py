"""The CTPL tariff as tables: bases, the five 2020 schemes, the tax per province, refusals.

Expected figures are written out here, not read from the module's tables, so a wrong
table fails a test.
"""

from collections.abc import Callable
from decimal import Decimal

import pytest

from cloud import tariff
from cloud.tariff import ClaimsRecord, Premium, TariffError, Vehicle

D = Decimal
SHANGHAI, BEIJING, GUANGDONG, INNER_MONGOLIA = "310000", "110000", "440000", "150000"
NEW = ClaimsRecord(first_insured=True, claim_free_years=0, at_fault_claims_last_year=0,
                   fatal_last_year=False)  # fmt: skip


def record(years: int = 0, claims: int = 0, fatal: bool = False) -> ClaimsRecord:
    return ClaimsRecord(False, years, claims, fatal)


ONE_FREE_YEAR = record(years=1)


def car(
    region: str = SHANGHAI,
    *,
    kind: str = "family_car",
    seats: int = 5,
    litres: str = "1.5",
    fuel: str = "petrol",
    claims: ClaimsRecord = ONE_FREE_YEAR,
) -> Vehicle:
    return Vehicle(region, kind, seats, D(litres), fuel, claims)


def code_of(call: Callable[[], object]) -> str:
    with pytest.raises(TariffError) as caught:
        call()
    return caught.value.code


# -- golden figures ------------------------------------------------------------------------


def test_shanghai_family_car_one_claim_free_year() -> None:
    quote = tariff.premium(car())
    assert (quote.base, quote.scheme, quote.row, quote.floating_rate) == (
        D(950), "E", "A1", D("-0.10"),
    )  # fmt: skip
    assert (quote.ctpl, quote.vehicle_vessel_tax, quote.total) == (D(855), D(360), D(1215))
    assert quote.tax_exemption is None
    assert quote.wire() == {
        "currency": "CNY", "base": "950.00", "floating_rate": "-0.10", "row": "A1",
        "scheme": "E", "ctpl": "855.00", "vehicle_vessel_tax": "360.00",
        "tax_exemption": None, "total": "1215.00",
    }  # fmt: skip


def test_inner_mongolia_scheme_a_ctpl_and_no_tax_table() -> None:
    # The same car: 950 × 0.70. Inner Mongolia has no 车船税 table here, so a petrol car
    # is refused; a bev owes no tax and shows the CTPL alone.
    assert tariff.floating_rate(INNER_MONGOLIA, ONE_FREE_YEAR) == ("A1", D("-0.30"))
    assert code_of(lambda: tariff.premium(car(INNER_MONGOLIA))) == "tax_table_missing"
    quote = tariff.premium(car(INNER_MONGOLIA, fuel="bev", litres="0"))
    assert tariff.money(quote.ctpl) == "665.00" and tariff.money(quote.total) == "665.00"


def test_beijing_scheme_d() -> None:
    quote = tariff.premium(car(BEIJING))
    assert (quote.scheme, tariff.money(quote.ctpl), tariff.money(quote.vehicle_vessel_tax)) == (
        "D", "807.50", "420.00",
    )  # fmt: skip
    assert tariff.money(quote.total) == "1227.50"


def test_seven_seat_family_car() -> None:
    quote = tariff.premium(car(seats=7, litres="2.0"))
    assert (quote.base, quote.ctpl, quote.vehicle_vessel_tax, quote.total) == (
        D(1100), D(990), D(450), D(1440),
    )  # fmt: skip


def test_enterprise_passenger_car() -> None:
    quote = tariff.premium(car(GUANGDONG, kind="enterprise_passenger", seats=7, litres="2.0",
                               claims=record(years=5)))  # fmt: skip
    assert (quote.base, quote.row, quote.ctpl, quote.vehicle_vessel_tax, quote.total) == (
        D(1130), "A3", D(791), D(420), D(1211),
    )  # fmt: skip


def test_fifteen_seat_enterprise_bev_in_shenzhen() -> None:
    quote = tariff.premium(car("440300", kind="enterprise_passenger", seats=15, litres="0",
                               fuel="bev", claims=record(years=2)))  # fmt: skip
    assert (quote.base, quote.row, tariff.money(quote.ctpl)) == (D(1220), "A2", "976.00")
    assert (quote.vehicle_vessel_tax, quote.tax_exemption) == (D(0), "new_energy")


def test_bev_in_shanghai_is_exempt() -> None:
    quote = tariff.premium(car(fuel="bev", litres="0"))
    assert (tariff.money(quote.vehicle_vessel_tax), quote.tax_exemption) == ("0.00", "new_energy")
    assert tariff.money(quote.total) == "855.00"
    assert quote.wire()["tax_exemption"] == "new_energy"


@pytest.mark.parametrize("fuel", ["bev", "phev", "fcev"])
def test_every_new_energy_fuel_is_exempt_even_with_an_engine(fuel: str) -> None:
    assert tariff.vehicle_vessel_tax(BEIJING, D("1.5"), fuel, seats=5) == (D(0), "new_energy")


def test_first_insurance_does_not_float() -> None:
    quote = tariff.premium(car(claims=NEW))
    assert (quote.row, quote.floating_rate, tariff.money(quote.ctpl)) == ("new", D(0), "950.00")
    assert tariff.money(quote.total) == "1310.00"
    assert quote.wire()["floating_rate"] == "0.00"


def test_fatal_beats_claim_free() -> None:
    assert tariff.floating_rate(SHANGHAI, record(years=3, fatal=True)) == ("A6", D("0.30"))
    quote = tariff.premium(car(claims=record(years=3, fatal=True)))
    assert (tariff.money(quote.ctpl), tariff.money(quote.total)) == ("1235.00", "1595.00")


@pytest.mark.parametrize(
    ("claims", "row"),
    [
        (record(claims=1, fatal=True), "A6"),
        (record(claims=5, fatal=True), "A6"),
        (record(claims=2), "A5"),
        (record(claims=1), "A4"),
        (record(years=3, claims=2), "A5"),
        (record(years=2, claims=1), "A4"),
    ],
)
def test_the_highest_applying_row_wins(claims: ClaimsRecord, row: str) -> None:
    assert tariff.floating_rate(SHANGHAI, claims)[0] == row


# -- the five schemes, every row ---------------------------------------------------------

EXPECTED_RATES = {
    "A": ("-0.30", "-0.40", "-0.50", "0", "0.10", "0.30"),
    "B": ("-0.25", "-0.35", "-0.45", "0", "0.10", "0.30"),
    "C": ("-0.20", "-0.30", "-0.40", "0", "0.10", "0.30"),
    "D": ("-0.15", "-0.25", "-0.35", "0", "0.10", "0.30"),
    "E": ("-0.10", "-0.20", "-0.30", "0", "0.10", "0.30"),
}
ROW_RECORDS = {
    "A1": record(years=1),
    "A2": record(years=2),
    "A3": record(years=3),
    "A4": record(claims=1),
    "A5": record(claims=2),
    "A6": record(fatal=True),
}
SCHEME_REGIONS = {"A": "460000", "B": "610000", "C": "650000", "D": "130000", "E": "500000"}


@pytest.mark.parametrize(
    ("scheme", "row", "rate"),
    [(s, f"A{i + 1}", rate) for s, rates in EXPECTED_RATES.items() for i, rate in enumerate(rates)],
)
def test_every_row_of_every_scheme(scheme: str, row: str, rate: str) -> None:
    region = SCHEME_REGIONS[scheme]
    assert tariff.scheme_of(region) == scheme
    assert tariff.floating_rate(region, ROW_RECORDS[row]) == (row, D(rate))
    ctpl = tariff.premium(car(region, fuel="bev", litres="0", claims=ROW_RECORDS[row])).ctpl
    assert ctpl == (D(950) * (1 + D(rate))).quantize(D("0.01"))


def test_claim_free_years_are_capped_at_three() -> None:
    assert record(years=12) == record(years=3)
    assert tariff.floating_rate(BEIJING, record(years=12)) == ("A3", D("-0.35"))


NOTICE = {
    "A": "内蒙古自治区 海南省 青海省 西藏自治区",
    "B": "陕西省 云南省 广西壮族自治区",
    "C": "甘肃省 吉林省 山西省 黑龙江省 新疆维吾尔自治区",
    "D": "北京市 天津市 河北省 宁夏回族自治区",
    "E": "江苏省 浙江省 安徽省 上海市 湖南省 湖北省 江西省 辽宁省 河南省 福建省 重庆市 "
    "山东省 广东省 四川省 贵州省 深圳市 厦门市 大连市 青岛市 宁波市",
}
MAINLAND_PROVINCES = [
    "北京市", "天津市", "河北省", "山西省", "内蒙古自治区", "辽宁省", "吉林省", "黑龙江省",
    "上海市", "江苏省", "浙江省", "安徽省", "福建省", "江西省", "山东省", "河南省", "湖北省",
    "湖南省", "广东省", "广西壮族自治区", "海南省", "重庆市", "四川省", "贵州省", "云南省",
    "西藏自治区", "陕西省", "甘肃省", "青海省", "宁夏回族自治区", "新疆维吾尔自治区",
]  # fmt: skip


def test_every_one_of_the_31_provinces_has_the_notices_scheme() -> None:
    assert len(MAINLAND_PROVINCES) == 31
    by_name = {tariff.region_name(code): code for code in tariff.PROVINCES}
    assert sorted(by_name) == sorted(MAINLAND_PROVINCES)
    listed = {name: scheme for scheme, names in NOTICE.items() for name in names.split()}
    by_name |= {tariff.region_name(code): code for code in tariff.CITIES}
    assert len(listed) == 36 and set(listed) == set(by_name)
    assert {name: tariff.scheme_of(code) for name, code in by_name.items()} == listed


@pytest.mark.parametrize(
    ("code", "name", "scheme"),
    [
        ("440300", "深圳市", "E"),
        ("440305", "深圳市", "E"),  # 南山区: its city is listed
        ("440106", "广东省", "E"),  # 天河区 (广州): its province
        ("310115", "上海市", "E"),  # 浦东新区
        ("330200", "宁波市", "E"),
        ("540102", "西藏自治区", "A"),
        ("640100", "宁夏回族自治区", "D"),
    ],
)
def test_city_first_then_province(code: str, name: str, scheme: str) -> None:
    assert (tariff.region_name(code), tariff.scheme_of(code)) == (name, scheme)


@pytest.mark.parametrize(
    "code",
    ["710000", "810000", "820000", "000000", "31000", "3100000", "３１００００", "31000a", ""],
)
def test_unknown_or_malformed_region_is_refused(code: str) -> None:
    assert code_of(lambda: tariff.scheme_of(code)) == "region_unsupported"
    assert code_of(lambda: tariff.premium(car(code))) == "region_unsupported"


# -- plates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plate", "province"),
    [("沪A12345", "上海市"), ("京N·D1234", "北京市"), ("粤B12345", "广东省"),
     ("蒙A12345", "内蒙古自治区"), ("贵A12345", "贵州省"), ("云A12345", "云南省"),
     ("甘A12345", "甘肃省"), ("青A12345", "青海省"), ("宁A12345", "宁夏回族自治区"),
     (" 新A12345", "新疆维吾尔自治区")],
)  # fmt: skip
def test_region_of_plate(plate: str, province: str) -> None:
    assert tariff.region_name(tariff.region_of_plate(plate)) == province


def test_every_plate_abbreviation_is_one_province() -> None:
    abbreviations = "京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川贵云藏陕甘青宁新"
    codes = [tariff.region_of_plate(a + "A00001") for a in abbreviations]
    assert sorted(codes) == sorted(tariff.PROVINCES)


@pytest.mark.parametrize("plate", ["使014578", "WJ京12345", "港A1234", "", "   ", "A12345"])
def test_unknown_plate_abbreviation_is_refused(plate: str) -> None:
    assert code_of(lambda: tariff.region_of_plate(plate)) == "region_unsupported"


# -- bases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "seats", "base"),
    [
        ("family_car", 1, 950), ("family_car", 5, 950), ("family_car", 6, 1100),
        ("family_car", 9, 1100), ("family_car", 60, 1100),
        ("enterprise_passenger", 5, 1000), ("enterprise_passenger", 6, 1130),
        ("enterprise_passenger", 9, 1130), ("enterprise_passenger", 10, 1220),
        ("enterprise_passenger", 19, 1220), ("enterprise_passenger", 20, 1270),
        ("enterprise_passenger", 60, 1270),
    ],
)  # fmt: skip
def test_base_premium(kind: str, seats: int, base: int) -> None:
    assert tariff.base_premium(kind, seats) == D(base)


@pytest.mark.parametrize(
    "kind", ["taxi", "rental", "truck", "motorcycle", "tractor", "", "Family_Car"]
)
def test_other_kinds_are_refused(kind: str) -> None:
    assert code_of(lambda: tariff.base_premium(kind, 5)) == "vehicle_kind_unsupported"
    assert code_of(lambda: tariff.premium(car(kind=kind))) == "vehicle_kind_unsupported"


@pytest.mark.parametrize("seats", [0, -1, 61, True])
def test_seats_out_of_range_are_bad_facts(seats: int) -> None:
    assert code_of(lambda: tariff.base_premium("family_car", seats)) == "bad_facts"


# -- the vehicle and vessel tax ------------------------------------------------------------

TAX = {
    SHANGHAI: (180, 360, 450, 720, 1500, 3000, 4500),
    BEIJING: (300, 420, 480, 900, 1920, 3480, 5280),
    GUANGDONG: (180, 360, 420, 720, 1800, 3000, 4500),
}
BAND_LITRES = ("1.0", "1.6", "2.0", "2.5", "3.0", "4.0", "6.2")


@pytest.mark.parametrize(
    ("region", "band"), [(region, band) for region in TAX for band in range(7)]
)
def test_tax_per_province_and_band(region: str, band: int) -> None:
    tax = tariff.vehicle_vessel_tax(region, D(BAND_LITRES[band]), "petrol", seats=5)
    assert tax == (D(TAX[region][band]), None)


@pytest.mark.parametrize(
    ("litres", "tax"),
    [("0.8", 180), ("1.0", 180), ("1.001", 360), ("1.5", 360), ("1.6", 360), ("1.61", 450),
     ("2.0", 450), ("2.5", 720), ("3.0", 1500), ("4.0", 3000), ("4.01", 4500)],
)  # fmt: skip
def test_band_edges_include_their_limit(litres: str, tax: int) -> None:
    assert tariff.vehicle_vessel_tax(SHANGHAI, D(litres), "diesel", seats=5)[0] == D(tax)


def test_a_float_displacement_is_refused() -> None:
    # Decimal(1.6) is 1.6000000000000000888…: above the band edge, so a float is never taken.
    assert D(1.6) > D("1.6")
    float_litres: object = 1.6
    with pytest.raises(TariffError, match=r"^bad_facts: displacement must be a finite Decimal"):
        tariff.vehicle_vessel_tax(SHANGHAI, float_litres, "petrol", seats=5)  # type: ignore[arg-type]


def test_cities_use_their_provinces_table() -> None:
    assert tariff.vehicle_vessel_tax("440300", D("1.8"), "petrol", seats=5) == (D(420), None)
    assert tariff.vehicle_vessel_tax("110105", D("1.8"), "petrol", seats=5) == (D(480), None)


def test_a_hybrid_is_taxed_in_full() -> None:
    assert tariff.vehicle_vessel_tax(BEIJING, D("1.5"), "hybrid", seats=5) == (D(420), None)


def test_every_provincial_figure_lies_in_the_national_range() -> None:
    national = ((60, 360), (300, 540), (360, 660), (660, 1200), (1200, 2400), (2400, 3600),
                (3600, 5400))  # fmt: skip
    assert tuple((D(lo), D(hi)) for lo, hi in national) == tariff.NATIONAL_TAX_RANGES
    assert set(tariff.PROVINCIAL_TAX) >= {SHANGHAI, BEIJING, GUANGDONG}
    for code, table in tariff.PROVINCIAL_TAX.items():
        assert len(table) == 7, code
        for figure, (low, high) in zip(table, national, strict=True):
            assert low <= figure <= high, (code, figure)


def test_no_table_is_refused_only_when_a_tax_is_due() -> None:
    assert code_of(lambda: tariff.vehicle_vessel_tax("320000", D("1.5"), "petrol", seats=5)) == (
        "tax_table_missing"
    )
    assert tariff.vehicle_vessel_tax("320000", D("0"), "bev", seats=5) == (D(0), "new_energy")


def test_more_than_nine_seats_is_not_a_passenger_car() -> None:
    assert code_of(lambda: tariff.premium(car(kind="enterprise_passenger", seats=10))) == (
        "tax_table_missing"
    )
    assert tariff.vehicle_vessel_tax(SHANGHAI, D("2.0"), "petrol", seats=9) == (D(450), None)


@pytest.mark.parametrize(
    ("litres", "fuel"),
    [("0", "petrol"), ("0", "hybrid"), ("-1.5", "petrol"), ("-0.1", "bev"), ("NaN", "petrol"),
     ("Infinity", "diesel"), ("1.5", "lpg"), ("1.5", "PETROL"), ("1.5", "")],
)  # fmt: skip
def test_bad_displacement_or_fuel_is_refused(litres: str, fuel: str) -> None:
    assert code_of(lambda: tariff.premium(car(litres=litres, fuel=fuel))) == "bad_facts"


# -- the claims record and errors ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (False, -1, 0, False),  # negative years
        (False, 1, -1, False),  # negative claims
        (True, 1, 0, False),  # a first insurance has no record
        (True, 0, 1, False),
        (True, 0, 0, True),
        (False, 0, 0, False),  # insured before, no accident, yet no claim-free year
        (False, 1.0, 0, False),
        (False, True, 0, False),
        (0, 1, 0, False),
        (False, 1, 0, None),
    ],
)
def test_bad_claims_records_are_refused(args: tuple[object, ...]) -> None:
    with pytest.raises(TariffError) as caught:
        ClaimsRecord(*args)  # type: ignore[arg-type]
    assert caught.value.code == "bad_facts"


def test_error_reads_code_then_message() -> None:
    with pytest.raises(TariffError) as caught:
        tariff.base_premium("taxi", 5)
    err = caught.value
    assert isinstance(err, ValueError)
    assert str(err) == f"vehicle_kind_unsupported: {err.message}" and "'taxi'" in err.message


def test_money_is_two_places_half_up() -> None:
    assert [tariff.money(D(x)) for x in ("1079.5", "0.005", "-0.15", "12")] == [
        "1079.50", "0.01", "-0.15", "12.00",
    ]  # fmt: skip
    assert code_of(lambda: tariff.money(D("NaN"))) == "bad_facts"


def test_premium_is_a_frozen_value() -> None:
    quote = tariff.premium(car())
    with pytest.raises(AttributeError):
        quote.ctpl = D(0)  # type: ignore[misc]
    assert isinstance(quote, Premium) and quote.total == quote.ctpl + quote.vehicle_vessel_tax
