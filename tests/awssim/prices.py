"""AWS's Price List API (pricing:GetProducts), which moto lacks, for the GPU instance types' on-demand prices.

A type's price list holds a product for each way of running it: each operating system, with licensed software
or not, shared or dedicated tenancy, on demand or in a capacity reservation, and as an On-Demand Capacity Block;
TERM_MATCH filters pick among them by their attributes, and a product's price is in its OnDemand term, a string
of USD per hour (https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/using-the-aws-price-list-query-api.html).
The API answers only where its endpoints are (us-east-1, eu-central-1, ap-south-1), for every region. The plain
Linux prices of us-east-1 are AWS's list prices of 2025; the other regions' are this simulator's own, higher, as
most regions' are."""

import json
from typing import Any

from .calls import AwsCall
from .errors import Response, error_response, json_response

ENDPOINT_REGIONS = ("us-east-1", "eu-central-1", "ap-south-1")
US_EAST_1 = {"p3.16xlarge": 24.48, "p3dn.24xlarge": 31.212, "p4d.24xlarge": 21.958, "p5.48xlarge": 55.04,
             "g5.xlarge": 1.006, "g6.xlarge": 0.805}
REGION_FACTORS = {"us-east-1": 1.0, "us-east-2": 1.0, "us-west-2": 1.0, "eu-west-1": 1.1, "eu-central-1": 1.2,
                  "ap-northeast-1": 1.3, "ap-south-1": 1.15}
PLAIN = {"operatingSystem": "Linux", "preInstalledSw": "NA", "licenseModel": "No License required",
         "tenancy": "Shared", "capacitystatus": "Used", "marketoption": "OnDemand"}
# The type's other products: (attributes that differ from the plain machine's, its price as a share of it)
OTHERS = (({"operatingSystem": "Windows", "licenseModel": "License included"}, 1.3),
          ({"operatingSystem": "RHEL"}, 1.05),
          ({"preInstalledSw": "SQL Std"}, 1.5),
          ({"tenancy": "Dedicated"}, 1.1),
          ({"capacitystatus": "UnusedCapacityReservation"}, 1.0),
          ({"capacitystatus": "AllocatedCapacityReservation"}, 0.0),
          ({"marketoption": "CapacityBlock"}, 0.7))
TERM, DIMENSION = "JRTCKXETXF", "6YS6EN2CT7"  # an on-demand offer's term code and hourly rate's


def answer(call: AwsCall) -> Response:
    """GetProducts of AmazonEC2's compute instances, filtered by TERM_MATCH on their attributes."""
    if call.region not in ENDPOINT_REGIONS:
        return error_response("pricing", "UnrecognizedClientException", f"no Price List endpoint in {call.region}")
    if call.action != "GetProducts" or call.params.get("ServiceCode") != "AmazonEC2":
        return error_response("pricing", "InvalidParameterException", "only AmazonEC2's GetProducts is simulated")
    wanted = {}
    while (field := call.params.get(f"Filters.{len(wanted) + 1}.Field")) is not None:
        wanted[field] = call.params[f"Filters.{len(wanted) + 1}.Value"]
    found = [json.dumps(product) for product in _products()
             if all(product["product"]["attributes"].get(field) == value for field, value in wanted.items())]
    return json_response({"FormatVersion": "aws_v1", "PriceList": found})


def _products() -> list[dict[str, Any]]:
    products = []
    for region, factor in REGION_FACTORS.items():
        for instance_type, usd in US_EAST_1.items():
            for changes, share in (({}, 1.0), *OTHERS):
                attributes = {**PLAIN, **changes, "instanceType": instance_type, "regionCode": region,
                              "servicecode": "AmazonEC2"}
                products.append(_product(f"SKU{len(products):06d}", attributes, usd * factor * share))
    return products


def _product(sku: str, attributes: dict[str, str], usd: float) -> dict[str, Any]:
    dimension = {"unit": "Hrs", "beginRange": "0", "endRange": "Inf", "pricePerUnit": {"USD": f"{usd:.10f}"},
                 "rateCode": f"{sku}.{TERM}.{DIMENSION}", "appliesTo": [], "description": "per On Demand hour"}
    return {"product": {"productFamily": "Compute Instance", "attributes": attributes, "sku": sku},
            "serviceCode": "AmazonEC2",
            "terms": {"OnDemand": {f"{sku}.{TERM}": {"offerTermCode": TERM, "sku": sku, "termAttributes": {},
                                                    "priceDimensions": {f"{sku}.{TERM}.{DIMENSION}": dimension}}}}}
