#!/usr/bin/env python3
"""Regenerates the recipient time-zone data in domain/data/ from a libphonenumber checkout.

Data, not code: libphonenumber (https://github.com/google/libphonenumber, Apache License 2.0,
see domain/data/LICENSE-libphonenumber) maps number prefixes to IANA time zones
(resources/timezones/map_data.txt), NANP area codes to places (resources/geocoding/en/1.txt)
and regions to their country calling code and national prefix (resources/PhoneNumberMetadata.xml).
This script copies the first as is, reduces the second to two-letter state/province codes and
the third to `region|calling code|national prefix|international prefix` (the prefixes only
where they are plain digits).

    python3 scripts/phone_data.py /path/to/libphonenumber
"""
import pathlib
import re
import sys
import xml.etree.ElementTree as ET

NAMES = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Washington D.C.": "DC",
    "Florida": "FL", "Georgia": "GA", "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL",
    "Indiana": "IN", "Iowa": "IA", "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA",
    "Maine": "ME", "Maryland": "MD", "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN",
    "Mississippi": "MS", "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV",
    "New Hampshire": "NH", "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY",
    "North Carolina": "NC", "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR",
    "Pennsylvania": "PA", "Rhode Island": "RI", "South Carolina": "SC", "South Dakota": "SD",
    "Tennessee": "TN", "Texas": "TX", "Utah": "UT", "Vermont": "VT", "Virginia": "VA",
    "Washington State": "WA", "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
    "Alberta": "AB", "British Columbia": "BC", "British Colombia": "BC", "Manitoba": "MB",
    "New Brunswick": "NB", "Newfoundland and Labrador": "NL", "Nova Scotia/Prince Edward Island": "NS",
    "Northwest Territories/Nunavut/Yukon": "NT", "Ontario": "ON", "Quebec": "QC",
    "Saskatchewan": "SK",
}


def lines(path):
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            yield line


def main(repo):
    out = pathlib.Path(__file__).resolve().parent.parent / "domain" / "data"
    tz = [l for l in lines(repo / "resources/timezones/map_data.txt")]
    (out / "phone_timezones.txt").write_text("\n".join(tz) + "\n")
    regions = []
    for line in lines(repo / "resources/geocoding/en/1.txt"):
        prefix, place = line.split("|", 1)
        if len(prefix) != 4:
            continue
        tail = place.rsplit(", ", 1)[-1]
        code = tail if len(tail) == 2 else NAMES.get(place)
        if code is None:
            sys.exit(f"no state code for {line!r}: add it to NAMES")
        regions.append(f"{prefix[1:]}|{code}")
    (out / "nanp_regions.txt").write_text("\n".join(regions) + "\n")
    codes = []
    meta = ET.parse(repo / "resources/PhoneNumberMetadata.xml").getroot()
    for t in meta.iter("territory"):
        region = t.get("id")
        if not re.fullmatch(r"[A-Z]{2}", region):
            continue  # 001: non-geographic entities
        plain = lambda v: v if v and re.fullmatch(r"[0-9]+", v) else ""
        codes.append(f"{region}|{t.get('countryCode')}|{plain(t.get('nationalPrefix'))}|{plain(t.get('internationalPrefix'))}")
    (out / "phone_regions.txt").write_text("\n".join(codes) + "\n")
    print(f"{len(tz)} time-zone prefixes, {len(regions)} area codes, {len(codes)} regions")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
