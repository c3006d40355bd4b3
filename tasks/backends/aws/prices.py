"""An instance type's on-demand price in the run's region, from AWS's Price List API. Prices differ by region, and
a budget checked against another region's price would let a run spend more than its plan says. The API answers
from us-east-1 (also eu-central-1 and ap-south-1) for every region. Where it cannot answer (credentials without
pricing:GetProducts, no product for the type there), the catalogue's us-east-1 price stands in, and a warning
says so. https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_GetProducts.html"""

from __future__ import annotations

import json
import logging

import botocore.exceptions

from tasks.backends.aws import catalog
from tasks.backends.aws.clients import RETRIES, Clients, error_code

log = logging.getLogger(__name__)

PRICE_LIST_REGION = "us-east-1"
# The plain on-demand machine: Linux (not RHEL, SUSE, ...) without software such as SQL Server, shared tenancy;
# not a capacity reservation's, nor an On-Demand Capacity Block's, which share the type's price list.
PLAIN_MACHINE = {"operatingSystem": "Linux", "preInstalledSw": "NA", "tenancy": "Shared", "capacitystatus": "Used",
                 "marketoption": "OnDemand"}


def on_demand_usd(clients: Clients, instance_type: str) -> float:
    """USD per hour of the type on demand in the clients' region."""
    region, fallback = clients.region, catalog.instance_type(instance_type).on_demand_usd
    filters = [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in
               {"instanceType": instance_type, "regionCode": region, **PLAIN_MACHINE}.items()]
    try:
        pricing = clients.session.client("pricing", region_name=PRICE_LIST_REGION, config=RETRIES)
        pages = pricing.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters,
                                                                FormatVersion="aws_v1")
        hourly = [price for page in pages for product in page["PriceList"] for price in _hourly(json.loads(product))]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        said = f"answered {error_code(exc)}" if isinstance(exc, botocore.exceptions.ClientError) else \
            f"could not be asked ({exc})"
        log.warning("AWS's price list %s (pricing:GetProducts, in tasks/backends/aws/user_policy.json): the cost "
                    "plan takes %s's us-east-1 price, $%.2f/h, which may be under %s's", said, instance_type,
                    fallback, region)
        return fallback
    if not hourly:
        log.warning("AWS's price list has no on-demand Linux price of %s in %s: the cost plan takes its us-east-1 "
                    "price, $%.2f/h", instance_type, region, fallback)
        return fallback
    return max(hourly)


def _hourly(product: dict) -> list[float]:
    """A price list product's on-demand prices per hour."""
    return [float(dimension["pricePerUnit"]["USD"]) for term in product["terms"].get("OnDemand", {}).values()
            for dimension in term["priceDimensions"].values() if dimension["unit"] == "Hrs"]
