"""Converters from the five public prostate downloads to `<root>/dataset/<site>/{Image,Mask}/<case>.nii.gz`."""

from data_preparation.converters import i2cvb, msd, nci_isbi, promise12, prostatex
from data_preparation.converters.common import Converter

CONVERTERS: dict[str, Converter] = {
    c.source: c for c in (i2cvb.CONVERTER, msd.CONVERTER, nci_isbi.CONVERTER, promise12.CONVERTER, prostatex.CONVERTER)
}
SOURCE_OF_SITE: dict[str, str] = {site: c.source for c in CONVERTERS.values() for site in c.sites}
